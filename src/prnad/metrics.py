"""Evaluation metrics for anomaly detection: AUROC, average precision, PRO curve and AUPRO.

Pure NumPy, arrays in and floats out, so that the numbers do not depend on torch or scikit-learn.
AUROC and AP follow scikit-learn's ``roc_auc_score`` and ``average_precision_score`` exactly (tied scores
form one curve point); AUPRO follows the MVTec AD reference evaluation (Bergmann et al.,
``generic_util.compute_pro`` and ``trapezoid``). Every function is one sort, O(n log n), so it runs on all
pixels of a test set (millions of values) in about a second.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 8-connectivity, as in the MVTec AD reference: diagonal neighbours belong to the same defect region.
_REGION_STRUCTURE = np.ones((3, 3), dtype=int)


def _as_binary(labels: np.ndarray, name: str) -> np.ndarray:
    """Return ``labels`` as a bool array, or raise ValueError when a value is not 0/1 (or False/True)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (or False and True); got values {np.unique(labels)[:5]}")
    return labels.astype(bool)


def _check_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and validate a (scores, labels) pair: same shape, finite-or-inf scores, binary labels, both classes."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same shape; got {scores.shape} and {labels.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    positive = _as_binary(labels, "labels").ravel()
    num_positive = int(np.count_nonzero(positive))
    if num_positive == 0 or num_positive == positive.size:
        raise ValueError(
            f"labels must contain both classes (0 and 1); got {num_positive} positives among {positive.size} values"
        )
    return scores.ravel(), positive


def _tie_group_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count positives and negatives in each group of equal scores, groups in descending score order.

    Shapes: scores (n,), positive (n,) bool -> two int64 arrays (num_groups,). One group is one ROC/PR point.
    """
    order = np.argsort(scores)
    sorted_scores = scores[order]
    group_starts = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1
    bounds = np.concatenate(([0], group_starts, [scores.size]))
    cumulative_positive = np.concatenate(([0], np.cumsum(positive[order], dtype=np.int64)))
    num_positive = np.diff(cumulative_positive[bounds])[::-1]
    num_total = np.diff(bounds)[::-1]
    return num_positive, num_total - num_positive


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more anomalous) against binary ``labels``.

    Shapes: any, but equal; both are flattened. Tied scores are one ROC point, as in scikit-learn's
    ``roc_auc_score``; equivalently the Mann-Whitney U statistic with average ranks, P(s+ > s-) + P(s+ = s-)/2.
    Computed in integers and divided once, so it is exact up to one rounding.
    """
    scores, positive = _check_scores_labels(scores, labels)
    num_positive, num_negative = _tie_group_counts(scores, positive)
    positives_above = np.cumsum(num_positive) - num_positive
    # Each negative counts the positives ranked strictly above it, plus half of those tied with it.
    twice_pairs = int(np.sum(num_negative * (2 * positives_above + num_positive)))
    total_pairs = int(num_positive.sum()) * int(num_negative.sum())
    return twice_pairs / (2 * total_pairs)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) * P_n, as scikit-learn's ``average_precision_score``.

    Shapes: any, but equal; both are flattened. Thresholds are the distinct scores, descending, so tied
    scores enter together (one PR point), with no interpolation between points.
    """
    scores, positive = _check_scores_labels(scores, labels)
    num_positive, num_negative = _tie_group_counts(scores, positive)
    true_positives = np.cumsum(num_positive)
    precision = true_positives / np.cumsum(num_positive + num_negative)
    return float(np.sum(num_positive * precision) / true_positives[-1])


def _check_maps_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate anomaly maps (N, H, W) against ground-truth masks (N, H, W); return maps and bool masks."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks must both have shape (N, H, W); got {maps.shape} and {masks.shape}")
    if np.isnan(maps).any():
        raise ValueError("maps contain NaN")
    masks = _as_binary(masks, "masks")
    if not masks.any():
        raise ValueError(f"masks of shape {masks.shape} contain no anomalous pixel, so there is no region for PRO")
    if masks.all():
        raise ValueError(
            f"masks of shape {masks.shape} contain no normal pixel, so the false positive rate is undefined"
        )
    return maps, masks


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per-pixel PRO weight, shape (N, H, W): 1 / (num_regions * size_of_region) inside a region, 0 outside.

    Regions are the 8-connected components of each image's mask, counted over all images.
    """
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    num_regions = 0
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
        region_ids[index] = np.where(labelled > 0, labelled + num_regions, 0)
        num_regions += count
    sizes = np.bincount(region_ids.ravel(), minlength=num_regions + 1)
    weight_of_region = np.zeros(num_regions + 1)
    weight_of_region[1:] = 1.0 / (num_regions * sizes[1:])
    return weight_of_region[region_ids]


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap curve: (fpr, pro), each float64 (num_distinct_scores + 1,), starting at (0, 0).

    maps: (N, H, W) anomaly scores; masks: (N, H, W) bool ground truth. One point per distinct score t,
    descending: fpr = normal pixels >= t / all normal pixels; pro = mean over defect regions of the fraction
    of the region >= t. Each region counts equally whatever its size, unlike pixel AUROC (MVTec AD reference).
    """
    maps, masks = _check_maps_masks(maps, masks)
    scores = maps.ravel()
    normal = ~masks.ravel()
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    group_ends = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    false_positives = np.cumsum(normal[order], dtype=np.int64)[group_ends]
    fpr = false_positives / false_positives[-1]
    pro = np.minimum(np.cumsum(_region_weights(masks).ravel()[order])[group_ends], 1.0)
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the curve (x, y), x non-decreasing from 0 to 1, from x = 0 to x_max.

    The curve is linearly interpolated at x_max when no point lies exactly there (MVTec AD ``trapezoid``).
    """
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max:
        after = xs.size  # first point beyond x_max; exists because x ends at 1 >= x_max
        y_at_max = ys[-1] + (y[after] - ys[-1]) * (x_max - xs[-1]) / (x[after] - xs[-1])
        xs, ys = np.append(xs, x_max), np.append(ys, y_at_max)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1])) / 2)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve from FPR 0 to ``fpr_limit``, divided by ``fpr_limit`` (a perfect map gives 1.0).

    maps: (N, H, W) float anomaly maps; masks: (N, H, W) bool ground truth. The limit (0.3 in MVTec AD)
    keeps the score about the low false-positive range that matters in inspection.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def compute_metrics(
    image_scores: np.ndarray, image_labels: np.ndarray, maps: np.ndarray, masks: np.ndarray
) -> dict[str, float | None]:
    """The four reported metrics, in percent: image_auroc, pixel_auroc, pro (AUPRO at FPR 0.3), pixel_ap.

    image_scores, image_labels: (N,); maps, masks: (N, H, W). Pixel metrics pool every pixel of every test
    image. When masks have no anomalous pixel (an image-level-only test set) the pixel metrics are None.
    """
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.shape != masks.shape:
        raise ValueError(f"maps and masks must have the same shape; got {maps.shape} and {masks.shape}")
    metrics: dict[str, float | None] = {"image_auroc": 100.0 * auroc(image_scores, image_labels)}
    if not _as_binary(masks, "masks").any():
        return metrics | {"pixel_auroc": None, "pro": None, "pixel_ap": None}
    return metrics | {
        "pixel_auroc": 100.0 * auroc(maps, masks),
        "pro": 100.0 * aupro(maps, masks),
        "pixel_ap": 100.0 * average_precision(maps, masks),
    }
