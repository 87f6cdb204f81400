"""Decision thresholds: pure functions from calibration scores to a threshold, and the counts at one.

A value is anomalous when it is strictly above the threshold (``score > t``). Thresholds are fitted on a
calibration set that the test split never contributes to (see :mod:`prnad.training.calibration`): held-out normal
training images and anomalies made from them.
"""

from __future__ import annotations

import numpy as np

PROMISE_CONFIDENCE = 0.9  # how sure a stated false-alarm bound is (:func:`false_alarm_promise`)


def _descending_groups(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, descending, with the positives and negatives in each group of equal scores.

    scores (n,) float, positive (n,) bool -> values (g,), positives (g,) int64, negatives (g,) int64.
    """
    values, inverse = np.unique(scores, return_inverse=True)  # ascending
    pos = np.bincount(inverse, weights=positive, minlength=len(values)).astype(np.int64)
    total = np.bincount(inverse, minlength=len(values)).astype(np.int64)
    return values[::-1], pos[::-1], (total - pos)[::-1]


def _between(above: float, below: float) -> float:
    """A threshold strictly between two distinct values ``below < above``: their midpoint (or ``below``
    when the midpoint rounds onto ``above``), so that ``above > t >= below``."""
    mid = below + (above - below) / 2
    return mid if below <= mid < above else below


def _check_pair(scores: np.ndarray, labels: np.ndarray, need_negative: bool) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel().astype(bool)
    if scores.shape != positive.shape:
        raise ValueError(f"scores and labels differ in size: {scores.size} and {positive.size}")
    if not positive.any():
        raise ValueError("labels hold no positive: an optimal threshold needs anomalies")
    if need_negative and positive.all():
        raise ValueError("labels hold no negative: a balanced threshold needs normal values")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, positive


def _best_cut(values: np.ndarray, gain: np.ndarray) -> float:
    """The threshold of the cut with the highest ``gain`` (cut i flags the descending ``values[0..i]``); the
    first maximum (fewest flagged) wins, and the threshold lies midway to the next, unflagged value."""
    best = int(np.argmax(gain))
    if best + 1 < len(values):
        return _between(values[best], values[best + 1])
    return float(np.nextafter(values[-1], -np.inf))


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t that maximises F1 of the decision ``score > t``, and that F1.

    scores and labels of any equal shape (flattened), labels 0/1 with at least one positive. Only cuts
    between distinct scores are candidates (tied scores take the same decision). Among cuts of equal F1
    the one that flags the fewest values wins, and t lies midway between the lowest flagged score and the
    highest unflagged one: the widest margin on both sides, not a threshold glued to the anomalies.
    F1 depends on the share of positives: use it where that share is the real one (pixels of a set).
    """
    scores, positive = _check_pair(scores, labels, need_negative=False)
    values, pos, neg = _descending_groups(scores, positive)
    tp, fp = np.cumsum(pos), np.cumsum(neg)  # flagging groups 0..i
    f1 = 2 * tp / (tp + fp + positive.sum())  # 2TP / (2TP + FP + FN), FN = P - TP
    return _best_cut(values, f1), float(f1.max())


def balanced_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t that maximises TPR - FPR (Youden's J, i.e. balanced accuracy) of ``score > t``, and J.

    Unlike F1, J does not depend on how many positives and negatives the set holds: the right criterion
    when that mix is an arbitrary choice (so many simulated anomalies per held-out normal). Cuts, ties and
    the placement of t as in :func:`f1_optimal_threshold`; needs both classes.
    """
    scores, positive = _check_pair(scores, labels, need_negative=True)
    values, pos, neg = _descending_groups(scores, positive)
    j = np.cumsum(pos) / positive.sum() - np.cumsum(neg) / (~positive).sum()
    return _best_cut(values, j), float(j.max())


def false_alarm_threshold(normal_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold t at which at most ``rate`` of ``normal_scores`` are flagged (``score > t``).

    With n normal scores, at most floor(rate * n) of them lie above t; t is the next-highest normal score,
    so that any score above every allowed false alarm's level is flagged.
    """
    normal = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]  # descending
    if normal.size == 0:
        raise ValueError("no normal scores to set a false-alarm rate on")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the false-alarm rate must be in [0, 1], got {rate}")
    allowed = int(np.floor(rate * normal.size + 1e-9))
    if allowed >= normal.size:
        return float(np.nextafter(normal[-1], -np.inf))
    return float(normal[allowed])


def decision_counts(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    """True/false positives and negatives of ``score > threshold`` against 0/1 ``labels`` (any equal shape)."""
    flagged = np.asarray(scores).ravel() > threshold
    positive = np.asarray(labels).ravel().astype(bool)
    if flagged.shape != positive.shape:
        raise ValueError(f"scores and labels differ in size: {flagged.size} and {positive.size}")
    tp = int(np.count_nonzero(flagged & positive))
    fp = int(np.count_nonzero(flagged & ~positive))
    fn = int(np.count_nonzero(~flagged & positive))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(positive.size - tp - fp - fn)}


def precision_recall_f1(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall and F1 from :func:`decision_counts`; 0 where a ratio has an empty denominator."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def conformal_threshold(normal_scores: np.ndarray, rate: float) -> float:
    """The threshold t that flags a new normal image (``score > t``) with probability at most ``rate``,
    from n out-of-sample normal scores exchangeable with it: the k-th smallest, k = ceil((n + 1)(1 - rate)).

    A new normal score is equally likely to fall in each of the n + 1 gaps of the sorted scores, so it lies
    above the k-th smallest with probability (n + 1 - k) / (n + 1) <= rate. When k > n (rate below
    1 / (n + 1): too few normals to promise it), t is the largest score and the promise is 1 / (n + 1);
    :func:`false_alarm_promise` says what a threshold promises.
    """
    normal = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())  # ascending
    if normal.size == 0:
        raise ValueError("no normal scores to set a false-alarm rate on")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the false-alarm rate must be in (0, 1), got {rate}")
    k = int(np.ceil((normal.size + 1) * (1.0 - rate) - 1e-9))
    return float(normal[min(k, normal.size) - 1])


def false_alarm_promise(normal_scores: np.ndarray, threshold: float, confidence: float = 0.9) -> dict[str, float]:
    """What ``threshold`` promises on new normal images, from n out-of-sample normal scores of which m lie above
    it: the expected false-alarm rate, at most (m + 1) / (n + 1), and the rate that it stays under with
    probability ``confidence``, the ``confidence`` quantile of Beta(m + 1, n - m) (the law of the rate above the
    (n - m)-th smallest score; a threshold at or above it flags new normals no more often).

    Returns ``normals`` n, ``above`` m, ``expected_rate``, ``bound`` and ``confidence``.
    """
    from scipy.stats import beta

    normal = np.asarray(normal_scores, dtype=np.float64).ravel()
    if normal.size == 0:
        raise ValueError("no normal scores to promise a false-alarm rate from")
    n, m = int(normal.size), int(np.count_nonzero(normal > threshold))
    bound = 1.0 if m == n else float(beta.ppf(confidence, m + 1, n - m))
    return {"normals": n, "above": m, "expected_rate": (m + 1) / (n + 1), "bound": bound, "confidence": confidence}
