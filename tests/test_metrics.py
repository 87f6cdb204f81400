"""Tests of prnad.metrics: hand-computed cases, scikit-learn agreement, and a slow reference AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from prnad.metrics import aupro, auroc, average_precision, compute_metrics, pro_curve

# --- AUROC and AP: hand-computed cases -------------------------------------------------------------------


def test_auroc_hand_case() -> None:
    # Pairs (positive, negative): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, 0.1) right, (0.8, 0.4) right: 3/4.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75


def test_auroc_perfect_reversed_and_all_tied() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc(np.array([0.0, 0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.1, 0.0]), labels) == 0.0
    assert auroc(np.full(5, 0.3), labels) == 0.5


def test_auroc_tie_counts_half() -> None:
    # Positives {0.5, 0.9}, negatives {0.5, 0.1}: 0.9 beats both, 0.5 beats 0.1 and ties 0.5 (1/2): 3.5 / 4.
    assert auroc(np.array([0.5, 0.5, 0.9, 0.1]), np.array([1, 0, 1, 0])) == 0.875


def test_auroc_accepts_bool_labels_and_any_equal_shape() -> None:
    scores = np.array([[0.1, 0.4], [0.35, 0.8]], dtype=np.float32)
    assert auroc(scores, np.array([[False, False], [True, True]])) == 0.75


def test_average_precision_hand_case() -> None:
    # Descending: 0.8 (pos) P=1, R=1/2; 0.4 (neg) adds no recall; 0.35 (pos) P=2/3, R=1.  AP = 1/2*1 + 1/2*2/3.
    ap = average_precision(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert ap == pytest.approx(5 / 6, abs=1e-15)


def test_average_precision_groups_ties() -> None:
    # The three 0.5 scores form one point: P = 2/3 at R = 1, so AP = 2/3 (taking the positives first would give 1).
    ap = average_precision(np.array([0.5, 0.5, 0.5, 0.2]), np.array([1, 0, 1, 0]))
    assert ap == pytest.approx(2 / 3, abs=1e-15)
    assert average_precision(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1])) == 1.0


# --- AUROC and AP: agreement with scikit-learn on tied random data -----------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_auroc_and_ap_match_sklearn(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.2
    scores = np.round(rng.random(3000) + 0.3 * labels, decimals)  # rounding makes many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12, abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), rel=1e-12, abs=1e-12
    )


# --- AUPRO --------------------------------------------------------------------------------------------------


def _reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Straightforward AUPRO: one threshold at a time, regions handled one by one."""
    regions = []
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == k) for k in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        detected = maps >= t
        fprs.append(np.sum(detected & normal) / np.sum(normal))
        pros.append(np.mean([np.sum(detected[i] & region) / np.sum(region) for i, region in regions]))
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs[:-1], pros[:-1], fprs[1:], pros[1:], strict=True):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < fpr_limit:
            y_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_limit) / 2
    return area / fpr_limit


def _random_blob_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 images of 16x16: rectangles and single pixels as defects, scores rounded to 1 decimal (many ties)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 16, 16), dtype=bool)
    for image in range(3):
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, 14, size=2)
            height, width = rng.integers(1, 4, size=2)
            masks[image, row : row + height, col : col + width] = True
    maps = np.round(rng.random(masks.shape) * 0.8 + 0.4 * masks, 1)
    return maps, masks


def test_aupro_perfect_map_is_one() -> None:
    _, masks = _random_blob_case(0)
    rng = np.random.default_rng(5)
    maps = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.5 * rng.random(masks.shape))
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-12)


def test_aupro_hand_case() -> None:
    # One 1x8 image. Regions r1 = {0} (size 1), r2 = {2, 3} (size 2): each r1 pixel adds 1/2 to PRO, each r2
    # pixel 1/4. Five normal pixels {1, 4, 5, 6, 7}, each adds 1/5 = 0.2 to FPR. Descending scores:
    #   0.9 (r1) -> (0, 0.5); 0.8 (r2) -> (0, 0.75); 0.7 (normal) -> (0.2, 0.75);
    #   0.5 (r2 and normal, tied: one point) -> (0.4, 1.0); then (0.6, 1), (0.8, 1), (1, 1).
    # Area to 0.3: 0.2 * 0.75 = 0.15; PRO at 0.3 = 0.75 + 0.25 * (0.1 / 0.2) = 0.875,
    # so 0.1 * (0.75 + 0.875) / 2 = 0.08125. Total 0.23125 / 0.3 = 37/48.
    maps = np.array([[[0.9, 0.7, 0.8, 0.5, 0.5, 0.3, 0.2, 0.1]]])
    masks = np.array([[[1, 0, 1, 1, 0, 0, 0, 0]]], dtype=bool)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0], atol=1e-15)
    assert aupro(maps, masks) == pytest.approx(37 / 48, abs=1e-14)
    # Up to FPR 1: segments 0.15 + 0.2 * 0.875 + 0.6 * 1 = 0.925.
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.925, abs=1e-14)


def test_pro_regions_are_8_connected() -> None:
    # (0,0) touches (1,1) only diagonally: with 8-connectivity {(0,0), (1,1), (1,2)} is one region of size 3,
    # so detecting (0,0) alone gives PRO 1/3 (4-connectivity would give 1/2).
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = np.where(masks, 0.5, 0.1)
    maps[0, 0, 0] = 0.9
    fpr, pro = pro_curve(maps, masks)
    assert fpr[1] == 0.0
    assert pro[1] == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_aupro_matches_reference(seed: int) -> None:
    maps, masks = _random_blob_case(seed)
    assert aupro(maps, masks) == pytest.approx(_reference_aupro(maps, masks), abs=1e-10)
    assert aupro(maps, masks, fpr_limit=0.05) == pytest.approx(_reference_aupro(maps, masks, 0.05), abs=1e-10)


# --- Errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [auroc, average_precision])
def test_binary_metric_errors(metric) -> None:
    with pytest.raises(ValueError, match="both classes"):
        metric(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="both classes"):
        metric(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        metric(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        metric(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        metric(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))


def test_aupro_errors() -> None:
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="no anomalous pixel"):
        aupro(maps, masks)
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(maps, ~masks)
    masks[0, 1, 1] = True
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) and \(2, 4, 3\)"):
        aupro(maps, masks[:, :, :3])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pro_curve(maps[0], masks[0])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)


# --- compute_metrics ----------------------------------------------------------------------------------------


def test_compute_metrics_in_percent() -> None:
    maps, masks = _random_blob_case(1)
    image_scores = np.array([0.1, 0.4, 0.35, 0.8])
    image_labels = np.array([0, 0, 1, 1])
    maps4, masks4 = np.concatenate([maps, maps[:1]]), np.concatenate([masks, masks[:1]])
    metrics = compute_metrics(image_scores, image_labels, maps4, masks4)
    assert set(metrics) == {"image_auroc", "pixel_auroc", "pro", "pixel_ap"}
    assert metrics["image_auroc"] == 75.0
    assert metrics["pixel_auroc"] == pytest.approx(100 * roc_auc_score(masks4.ravel(), maps4.ravel()), rel=1e-12)
    assert metrics["pixel_ap"] == pytest.approx(100 * average_precision_score(masks4.ravel(), maps4.ravel()), rel=1e-12)
    assert metrics["pro"] == pytest.approx(100 * _reference_aupro(maps4, masks4), abs=1e-8)


def test_compute_metrics_without_pixel_labels() -> None:
    metrics = compute_metrics(np.array([0.2, 0.9]), np.array([0, 1]), np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
    assert metrics == {"image_auroc": 100.0, "pixel_auroc": None, "pro": None, "pixel_ap": None}
