"""Fitting the decision thresholds after training, on a calibration set the test split never contributes to.

The calibration set is the held-out normal training images (label 0, empty masks) and ``n`` simulated
anomalies made from them (label 1, their masks): extended anomalies (EA, from the seen anomalies), HEA and
HOA at their training shares, drawn exactly as in training but from generators of their own. The model
never trained on any of these images: the normals were kept apart before the prototypes were computed.

Shape letters: N held-out normals, M calibration images, S image side.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from prnad.config import RunConfig
from prnad.errors import DataError
from prnad.fitting import to_batch
from prnad.inference import PREDICT_BATCH
from prnad.model import PRN
from prnad.model.prn import fused_for_inference, topk_score
from prnad.thresholds import (
    balanced_threshold,
    decision_counts,
    f1_optimal_threshold,
    false_alarm_threshold,
    precision_recall_f1,
)
from prnad.training.sampler import KINDS, AnomalyStream, TrainingPool, batch_kinds, kind_fractions

_CALIBRATION_STREAM = 2  # third seed word: calibration samples never share a generator with training ones


def holdout_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the normal images kept apart: max(2, round(fraction * n)) of ``n``, or none for 0.

    At least 2, because the score banks standardise on them (a spread needs two) and one normal image says
    little about false alarms. Drawn with ``numpy.random.RandomState(seed)`` (as the seen anomalies); at
    least one image stays for training, so ``n`` must be >= 3 when ``fraction`` > 0.
    """
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = max(2, round(fraction * n))
    if k >= n:
        raise ValueError(f"holding out {k} of {n} normal images leaves none to train on")
    return np.sort(np.random.RandomState(seed).permutation(n)[:k])


def _anomaly_kinds(pool: TrainingPool, config: RunConfig, n: int) -> tuple[str, ...]:
    """The kinds of ``n`` calibration anomalies: the training mix without normal and raw seen images."""
    shares = kind_fractions(config.synth, len(pool.seen_images))
    shares["normal"] = shares["seen"] = 0.0
    total = sum(shares.values())
    return batch_kinds({k: shares[k] / total for k in KINDS}, n, 0.5)


def calibration_set(pool: TrainingPool, config: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (M, S, S, 3) uint8, masks (M, S, S) bool and labels (M,) int: the held-out normals of ``pool``
    (its ``normals``), then ``config.threshold.calibration_anomalies`` simulated anomalies made from them."""
    n = config.threshold.calibration_anomalies
    stream = AnomalyStream(pool, config.synth, seed=config.train.seed, batch_size=n, start=0, stop=n)
    made = [
        stream.sample(kind, np.random.default_rng([config.train.seed, i, _CALIBRATION_STREAM]))
        for i, kind in enumerate(_anomaly_kinds(pool, config, n))
    ]
    images = np.concatenate([pool.normals, np.stack([image for image, _ in made])])
    masks = np.concatenate([np.zeros(pool.normals.shape[:3], dtype=bool), np.stack([m for _, m in made])])
    labels = np.concatenate([np.zeros(len(pool.normals), dtype=np.int64), np.ones(n, dtype=np.int64)])
    return images, masks, labels


@torch.inference_mode()
def batched_outputs(
    model: PRN, images: np.ndarray, device: torch.device, batch_size: int = PREDICT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (M,) float64 and logits (M, S, S) float32 of an eval-mode ``model`` on (M, S, S, 3) uint8."""
    scores, logits = [], []
    for start in range(0, len(images), batch_size):
        out = model(to_batch(images[start : start + batch_size], device))  # (b, 3, S, S) in [0, 1]
        scores.append(out.score.double().cpu().numpy())
        logits.append(out.logits[:, 0].float().cpu().numpy())
    return np.concatenate(scores), np.concatenate(logits)


def _mean_std(values: torch.Tensor) -> torch.Tensor:
    """(N, P) -> (2, P): mean and standard deviation (ddof 1, at least 1e-6) of each column, float64."""
    return torch.stack([values.mean(0), values.std(0).clamp_min(1e-6)])


@torch.no_grad()
def standardise_score(model: PRN, normals: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Set ``model.score_stats`` and ``model.map_stats`` from the held-out ``normals`` (N, S, S, 3) uint8,
    N >= 2: the mean and standard deviation (ddof 1; a spread below 1e-6 taken as 1e-6) of, per image, the
    top-K score and each bank's largest distance, and over every pixel, the decoder's logit and each bank's
    distance map upsampled to S. Returns the statistics as stored."""
    if len(normals) < 2:
        raise DataError(
            f"the image score needs at least 2 held-out normal images to standardise on, got {len(normals)}"
        )
    infer = fused_for_inference(model).to(device)
    image_parts, pixel_parts = [], []
    for start in range(0, len(normals), PREDICT_BATCH):
        batch = to_batch(normals[start : start + PREDICT_BATCH], device)  # (b, 3, S, S)
        logits, maps = infer.decode(batch)  # (b, 1, S, S), n_banks maps
        topk = topk_score(logits, model.topk, smoothing=model.score_smoothing)  # (b,) float64
        image_parts.append(torch.cat([topk[:, None], infer.largest_distances(maps).double()], dim=1).cpu())
        ups = infer.upsampled(maps, logits)  # n_banks x (b, 1, S, S), as the fused map takes them
        pixel_parts.append(torch.cat([logits, *ups], dim=1).permute(0, 2, 3, 1).flatten(0, 2).double().cpu())
    image_stats = _mean_std(torch.cat(image_parts))  # (2, 1 + n_banks) over N images
    map_stats = _mean_std(torch.cat(pixel_parts))  # (2, 1 + n_banks) over N*S*S pixels
    model.score_stats.copy_(image_stats.to(model.score_stats))
    model.map_stats.copy_(map_stats.to(model.map_stats))
    return {
        "image_mean": image_stats[0].tolist(),
        "image_std": image_stats[1].tolist(),
        "pixel_mean": map_stats[0].tolist(),
        "pixel_std": map_stats[1].tolist(),
        "normals": len(normals),
    }


def pixel_threshold(logits: np.ndarray, masks: np.ndarray, labels: np.ndarray, rate: float | None) -> tuple[float, str]:
    """The pixel threshold on the logits (M, S, S) of the calibration set, and how it was chosen.

    ``rate`` set: the lowest logit at which at most ``rate`` of the held-out normals' pixels (images with
    label 0) lie above it (:func:`false_alarm_threshold`). None: the F1-optimal logit over every pixel
    of the set against ``masks`` (M, S, S) bool. Warns when the held-out pixels are fewer than ``1 / rate``
    (the threshold is then their largest value, named in the method).
    """
    if rate is None:
        return f1_optimal_threshold(logits, masks)[
            0
        ], "f1-optimal over the pixels of held-out normals and simulated anomalies"
    normal_pixels = logits[labels == 0].ravel()  # N*S*S
    method = f"at most {rate:g} of the held-out normals' pixels flagged"
    if 0 < rate * normal_pixels.size < 1:
        warnings.warn(
            f"pixel threshold: {normal_pixels.size} held-out normal pixels are too few to resolve a false-alarm rate"
            f" of {rate:g} (it needs {int(np.ceil(1 / rate))}); the threshold is their largest value, which new"
            " normal images exceed more often: hold out more normal images (threshold.holdout_fraction) or set a"
            " larger threshold.pixel_false_alarm_rate",
            stacklevel=2,
        )
        method += f" (too few pixels to resolve it: {normal_pixels.size}; their largest value)"
    return false_alarm_threshold(normal_pixels, rate), method


def fit_thresholds(model: PRN, pool: TrainingPool, config: RunConfig, device: torch.device) -> dict[str, Any]:
    """Thresholds for ``model`` (a training-mode PRN: an inference copy is made) from the held-out normals
    in ``pool.normals`` and anomalies made from them.

    Returns what the checkpoint stores: ``image`` (on the image score, by ``threshold.image_criterion`` or
    ``max_false_alarm_rate``) and ``pixel`` (on the map, in [0, 1]: :func:`pixel_threshold` with
    ``threshold.pixel_false_alarm_rate``), each applied as ``value > threshold``, the methods, the
    calibration scores (so that a false-alarm rate can be set later without data) and the F1 each
    threshold reaches on the calibration set.
    """
    images, masks, labels = calibration_set(pool, config)
    infer = fused_for_inference(model).to(device)
    # The normals (first in the set) are scored apart from the anomalies, in predict's batches, so that each
    # stored normal score is the one ``detector.predict(normals)`` gives: float32 sums depend on the batch.
    normal = labels == 0
    parts = [batched_outputs(infer, images[rows], device, PREDICT_BATCH) for rows in (normal, ~normal)]
    scores, logits = (np.concatenate([part[i] for part in parts]) for i in (0, 1))
    normal_scores = scores[normal]
    rate = config.threshold.max_false_alarm_rate
    if rate is None:
        criterion = config.threshold.image_criterion
        fit = balanced_threshold if criterion == "balanced" else f1_optimal_threshold
        image_t = fit(scores, labels)[0]
        what = "TPR - FPR (balanced)" if criterion == "balanced" else "F1"
        method = f"highest {what} on held-out normals and simulated anomalies"
    else:
        image_t = false_alarm_threshold(normal_scores, rate)
        method = f"at most {rate:g} of the held-out normals flagged"
    image_f1 = precision_recall_f1(decision_counts(scores, labels, image_t))["f1"]
    pixel_logit, pixel_method = pixel_threshold(logits, masks, labels, config.threshold.pixel_false_alarm_rate)
    pixel_f1 = precision_recall_f1(decision_counts(logits, masks, pixel_logit))["f1"]
    return {
        "image": image_t,
        "pixel": float(1.0 / (1.0 + np.exp(-pixel_logit))),
        "image_method": method,
        "pixel_method": pixel_method,
        "max_false_alarm_rate": rate,
        "pixel_false_alarm_rate": config.threshold.pixel_false_alarm_rate,
        "calibration_f1": {"image": image_f1, "pixel": pixel_f1},
        "calibration_anomalies": int(labels.sum()),
        "normal_scores": [float(s) for s in normal_scores],
        "anomaly_scores": [float(s) for s in scores[labels == 1]],
    }
