"""Fitting the decision thresholds after training, on a calibration set the test split never contributes to.

The calibration set is the held-out normal training images (label 0, empty masks) and ``n`` simulated
anomalies made from them (label 1, their masks): extended anomalies (EA, from the seen anomalies), HEA and
HOA at their training shares, drawn exactly as in training but from generators of their own. The model
never trained on any of these images: the normals were kept apart before the prototypes were computed.

Shape letters: N held-out normals, M calibration images, S image side.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    PROMISE_CONFIDENCE,
    balanced_threshold,
    conformal_threshold,
    decision_counts,
    f1_optimal_threshold,
    false_alarm_promise,
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


@dataclass(frozen=True)
class NormalOutputs:
    """What the score and the fused map are made of on the held-out normals, before standardisation, on the
    CPU: ``parts`` (N, 1 + n_banks) float64 per image (the top-K score, each bank's largest distance),
    ``logits`` (N, 1, S, S) the decoder's, ``maps`` the banks' distance maps, n_banks x (N, 1, h_i, w_i), and
    ``pixels`` (N, S*S, 1 + n_banks) float64, each pixel's decoder logit and bank distances upsampled to S, as
    the fused map takes them."""

    parts: torch.Tensor
    logits: torch.Tensor
    maps: list[torch.Tensor]
    pixels: torch.Tensor


@torch.no_grad()
def normal_outputs(infer: PRN, normals: np.ndarray, device: torch.device) -> NormalOutputs:
    """The parts of an inference-ready ``infer`` (with banks) on ``normals`` (N, S, S, 3) uint8, computed in
    predict's batches (so that they are the numbers predict sums)."""
    parts, logits, maps = [], [], []
    for start in range(0, len(normals), PREDICT_BATCH):
        batch = to_batch(normals[start : start + PREDICT_BATCH], device)  # (b, 3, S, S)
        out_logits, out_maps = infer.decode(batch)  # (b, 1, S, S), n_banks x (b, 1, h_i, w_i)
        topk = topk_score(out_logits, infer.topk, smoothing=infer.score_smoothing)  # (b,) float64
        parts.append(torch.cat([topk[:, None], infer.largest_distances(out_maps).double()], dim=1).cpu())
        logits.append(out_logits.cpu())
        maps.append([m.cpu() for m in out_maps])
    all_logits, all_maps = torch.cat(logits), [torch.cat(per_bank) for per_bank in zip(*maps, strict=True)]
    ups = PRN.upsampled(all_maps, all_logits)  # n_banks x (N, 1, S, S)
    pixels = torch.cat([all_logits, *ups], dim=1).flatten(2).transpose(1, 2).double()  # (N, S*S, 1 + n_banks)
    return NormalOutputs(torch.cat(parts), all_logits, all_maps, pixels)


@torch.no_grad()
def standardise_score(model: PRN, normals: np.ndarray, device: torch.device) -> tuple[dict[str, Any], NormalOutputs]:
    """Set ``model.score_stats`` and ``model.map_stats`` from the held-out ``normals`` (N, S, S, 3) uint8,
    N >= 2: the mean and standard deviation (ddof 1; a spread below 1e-6 taken as 1e-6) of, per image, the
    top-K score and each bank's largest distance, and over every pixel, the decoder's logit and each bank's
    distance map upsampled to S. Returns the statistics as stored, and the outputs they came from."""
    if len(normals) < 2:
        raise DataError(
            f"the image score needs at least 2 held-out normal images to standardise on, got {len(normals)}"
        )
    infer = fused_for_inference(model).to(device)
    outputs = normal_outputs(infer, normals, device)
    image_stats = _mean_std(outputs.parts)  # (2, 1 + n_banks) over N images
    map_stats = _mean_std(outputs.pixels.flatten(0, 1))  # (2, 1 + n_banks) over N*S*S pixels
    model.score_stats.copy_(image_stats.to(model.score_stats))
    model.map_stats.copy_(map_stats.to(model.map_stats))
    stats = {
        "image_mean": image_stats[0].tolist(),
        "image_std": image_stats[1].tolist(),
        "pixel_mean": map_stats[0].tolist(),
        "pixel_std": map_stats[1].tolist(),
        "normals": len(normals),
    }
    return stats, outputs


@torch.no_grad()
def out_of_sample_normals(model: PRN, outputs: NormalOutputs) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) float64 and fused logits (N, S, S) float32 of the held-out normals, each image standardised on
    the other N - 1 (leave one out), N >= 3: as a new normal image is scored, by statistics it took no part in.
    The statistics standardised on all N would score each of them in-sample: their z-scores sum to 0 by
    construction, and their largest lies lower than a new image's, so a threshold set on them flags new normal
    images more often than it promises."""
    n = len(outputs.parts)
    if n < 3:
        raise ValueError(f"leaving one out needs at least 3 held-out normals, got {n}")
    loo = fused_for_inference(model).cpu()
    pixels = outputs.pixels  # (N, S*S, P)
    scores, logits = [], []
    for j in range(n):
        others = torch.arange(n) != j
        loo.score_stats.copy_(_mean_std(outputs.parts[others]).to(loo.score_stats))
        loo.map_stats.copy_(_mean_std(pixels[others].flatten(0, 1)).to(loo.map_stats))
        maps = [m[j : j + 1] for m in outputs.maps]  # n_banks x (1, 1, h_i, w_i)
        scores.append(float(loo.combined_score(outputs.parts[j : j + 1, 0], outputs.parts[j : j + 1, 1:])[0]))
        logits.append(loo.fused_logits(outputs.logits[j : j + 1], maps)[0, 0].float().numpy())
    return np.array(scores), np.stack(logits)


def pixel_threshold(logits: np.ndarray, masks: np.ndarray, labels: np.ndarray, rate: float | None) -> tuple[float, str]:
    """The pixel threshold on the logits (M, S, S) of the calibration set, and how it was chosen.

    ``rate`` set: the lowest logit at which at most ``rate`` of the held-out normals' pixels (images with
    label 0) lie above it (:func:`false_alarm_threshold`). None: the F1-optimal logit over every pixel
    of the set against ``masks`` (M, S, S) bool. When the held-out pixels are fewer than ``1 / rate`` the
    threshold is their largest value, and the method says so (the run's ``pixel_promise`` then states how often
    a new good part's mask is non-empty).
    """
    if rate is None:
        return f1_optimal_threshold(logits, masks)[
            0
        ], "f1-optimal over the pixels of held-out normals and simulated anomalies"
    normal_pixels = logits[labels == 0].ravel()  # N*S*S
    method = f"at most {rate:g} of the held-out normals' pixels flagged"
    if 0 < rate * normal_pixels.size < 1:  # a small run: what the threshold promises is said per image instead
        method += (
            f" (too few pixels to resolve it: {normal_pixels.size}; their largest value, which a new good part's"
            " map exceeds about 1 time in n + 1 for n held-out normals: see pixel_promise)"
        )
    return false_alarm_threshold(normal_pixels, rate), method


def fit_thresholds(
    model: PRN,
    pool: TrainingPool,
    config: RunConfig,
    device: torch.device,
    out_of_sample: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Thresholds for ``model`` (a training-mode PRN: an inference copy is made) from the held-out normals
    in ``pool.normals`` and anomalies made from them. ``out_of_sample``: the normals' scores (N,) and fused
    logits (N, S, S) each standardised without it (:func:`out_of_sample_normals`), which replace the model's
    own (standardised on them all) wherever a threshold is fitted or a promise made.

    Returns what the checkpoint stores: ``image`` (on the image score: with ``max_false_alarm_rate`` the
    conformal threshold, else by ``threshold.image_criterion``) and ``pixel`` (on the map, in [0, 1]:
    :func:`pixel_threshold` with ``threshold.pixel_false_alarm_rate``), each applied as ``value > threshold``,
    the methods, what each promises on new normal images (:func:`false_alarm_promise`; for the pixel threshold,
    on the share of normal images with any pixel flagged), the calibration scores (so that a false-alarm rate
    can be set later without data) and the F1 each threshold reaches on the calibration set.
    """
    images, masks, labels = calibration_set(pool, config)
    infer = fused_for_inference(model).to(device)
    # The normals (first in the set) are scored apart from the anomalies, in predict's batches, so that each
    # stored normal score is the one ``detector.predict(normals)`` gives: float32 sums depend on the batch.
    normal = labels == 0
    parts = [batched_outputs(infer, images[rows], device, PREDICT_BATCH) for rows in (normal, ~normal)]
    scores, logits = (np.concatenate([part[i] for part in parts]) for i in (0, 1))
    if out_of_sample is not None:
        scores[normal], logits[normal] = out_of_sample
    normal_scores = scores[normal]
    image_t, method = _image_threshold(scores, labels, config)
    image_f1 = precision_recall_f1(decision_counts(scores, labels, image_t))["f1"]
    pixel_logit, pixel_method = pixel_threshold(logits, masks, labels, config.threshold.pixel_false_alarm_rate)
    pixel_f1 = precision_recall_f1(decision_counts(logits, masks, pixel_logit))["f1"]
    largest_normal_logits = logits[normal].reshape(int(normal.sum()), -1).max(1)  # (N,)
    return {
        "image": image_t,
        "pixel": float(1.0 / (1.0 + np.exp(-pixel_logit))),
        "image_method": method,
        "pixel_method": pixel_method,
        "max_false_alarm_rate": config.threshold.max_false_alarm_rate,
        "pixel_false_alarm_rate": config.threshold.pixel_false_alarm_rate,
        "promise": false_alarm_promise(normal_scores, image_t, PROMISE_CONFIDENCE),
        "pixel_promise": false_alarm_promise(largest_normal_logits, pixel_logit, PROMISE_CONFIDENCE),
        "out_of_sample": out_of_sample is not None or model.n_score_banks == 0,
        "calibration_f1": {"image": image_f1, "pixel": pixel_f1},
        "calibration_anomalies": int(labels.sum()),
        "normal_scores": [float(s) for s in normal_scores],
        "normal_largest_pixels": [float(v) for v in 1.0 / (1.0 + np.exp(-largest_normal_logits))],
        "anomaly_scores": [float(s) for s in scores[labels == 1]],
    }


def _image_threshold(scores: np.ndarray, labels: np.ndarray, config: RunConfig) -> tuple[float, str]:
    """The image threshold on the calibration ``scores`` (normals labelled 0) and how it was chosen."""
    rate = config.threshold.max_false_alarm_rate
    if rate is not None:
        threshold = conformal_threshold(scores[labels == 0], rate)
        return threshold, f"conformal: new normal images flagged with probability at most {rate:g}"
    criterion = config.threshold.image_criterion
    fit = balanced_threshold if criterion == "balanced" else f1_optimal_threshold
    what = "TPR - FPR (balanced)" if criterion == "balanced" else "F1"
    return fit(scores, labels)[0], f"highest {what} on held-out normals and simulated anomalies"
