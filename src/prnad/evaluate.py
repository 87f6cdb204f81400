"""Evaluation of a trained model on a category's test split, with the run's seen anomalies removed.

The held-out test set is the category's test split minus the run's seen anomalies, matched by their
path relative to the category root (always, also for another data folder), and no test image may be a
byte-for-byte copy of a seen anomaly. Pixel metrics are computed on the logits: they rank pixels exactly
as the sigmoid would in exact arithmetic, without the ties of float32 saturation (sigmoid(x) == 1.0 for
x above about 16.6). Inference is timed per image at batch 1 from a tensor on the device to the map
(prototype matching included, image decoding excluded), after warm-up passes that are not counted.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prnad._version import __version__
from prnad.config import RunConfig, to_dict
from prnad.data import (
    Category,
    Sample,
    file_sha256,
    load_samples,
    relative_paths,
    require_both_classes,
    scan_data,
    seen_anomalies,
)
from prnad.errors import DataError, InferenceError
from prnad.metrics import compute_metrics
from prnad.model import PRN
from prnad.thresholds import (
    PROMISE_CONFIDENCE,
    decision_counts,
    f1_optimal_threshold,
    false_alarm_promise,
    precision_recall_f1,
)
from prnad.utils import device_name

WARMUP = 5
METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pro": "PRO (30% FPR)",
    "pixel_ap": "pixel AP",
}


@dataclass
class Predictions:
    """Per test image: score (N,) float64, logits (N, S, S) float32, sigmoid maps (N, S, S) float32,
    forward times in ms (N,)."""

    scores: np.ndarray
    logits: np.ndarray
    maps: np.ndarray
    ms: np.ndarray


def check_finite(logits: torch.Tensor, what: str) -> None:
    """Raise :class:`InferenceError` when a model's output holds NaN or infinity (a diverged model)."""
    finite = torch.isfinite(logits)
    if not finite.all():
        raise InferenceError(
            f"{what} produced {int((~finite).sum())} NaN or infinite map values; the model is unusable (retrain it)"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_predictions(model: PRN, images: np.ndarray, device: torch.device) -> Predictions:
    """Run ``model`` on (N, S, S, 3) uint8 images one at a time, timing each forward after warm-up."""
    model.eval()
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    for _ in range(WARMUP):
        model(tensors[:1].to(device).float().div(255))
    scores, logits, maps, ms = [], [], [], []
    for x in tensors:
        x = x[None].to(device).float().div(255)  # (1, 3, S, S)
        _sync(device)
        start = time.perf_counter()
        out = model(x)
        _sync(device)
        ms.append((time.perf_counter() - start) * 1000)
        scores.append(float(out.score[0]))
        logits.append(out.logits[0, 0].float().cpu().numpy())
        maps.append(out.anomaly_map[0, 0].float().cpu().numpy())
    return Predictions(np.array(scores), np.stack(logits), np.stack(maps), np.array(ms))


def _check_no_copies(test: tuple[Sample, ...], seen_sha256: dict[str, str], root: Path) -> None:
    """No test image may be a byte-for-byte copy of a seen anomaly (renamed or moved)."""
    trained_on = {digest: rel for rel, digest in seen_sha256.items()}
    for sample in test:
        if sample.label == 1 and (rel := trained_on.get(file_sha256(sample.path))) is not None:
            raise DataError(
                f"{sample.path}: is a copy of the seen anomaly {rel} the run trained on; it cannot be evaluated"
            )


def held_out_test_set(root: Path, config: RunConfig, info: dict[str, Any], *, own_data: bool) -> tuple[Sample, ...]:
    """The test samples of ``root`` minus the run's seen anomalies (by relative path), checked.

    ``own_data``: ``root`` is the folder the run trained on, so its split for the run's seed must give
    exactly the recorded seen anomalies; otherwise the data changed since training.
    """
    recorded = info.get("seen_anomalies")
    if recorded is None:
        raise DataError("the run records no seen anomalies (a checkpoint of an older prnad?); cannot hold them out")
    category: Category = scan_data(config.data, root)
    if own_data:
        seen, _ = seen_anomalies(category, config.data.seen_anomalies, config.train.seed, config.data.seen_defect_types)
        if sorted(relative_paths(seen, category.root)) != sorted(recorded):
            raise DataError(
                f"{root}: the seen anomalies of seed {config.train.seed} differ from those the run trained on; "
                "the data changed since training"
            )
    excluded = set(recorded)
    test = tuple(
        s for s, rel in zip(category.test, relative_paths(category.test, root), strict=True) if rel not in excluded
    )
    _check_no_copies(test, info.get("seen_sha256", {}), root)
    require_both_classes(test, root, why="once the run's seen anomalies are removed")
    return test


def write_maps(out_dir: Path, test: tuple[Sample, ...], root: Path, preds: Predictions) -> None:
    """Write each map as float32 .npy at its image's path relative to test/, and scores.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample, score, amap in zip(test, preds.scores, preds.maps, strict=True):
        rel = sample.path.relative_to(root / "test").with_suffix(".npy")
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / rel, amap.astype(np.float32))
        rows.append((sample.path.relative_to(root / "test").as_posix(), sample.label, f"{score:.17g}"))
    with (out_dir / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "score"])
        writer.writerows(rows)


def _types_metrics(test: tuple[Sample, ...], preds: Predictions, masks: np.ndarray, types: set[str]) -> dict:
    """The four metrics of the defect images of ``types`` against all normal test images, and their count."""
    labels = np.array([s.label for s in test])
    keep = np.array([s.label == 0 or s.defect_type in types for s in test])
    metrics = compute_metrics(preds.scores[keep], labels[keep], preds.logits[keep], masks[keep])
    return {"images": int(np.sum(keep & (labels == 1))), **_rounded(metrics)}


def per_type_metrics(test: tuple[Sample, ...], preds: Predictions, masks: np.ndarray) -> dict[str, dict]:
    """The four metrics per defect type, each type's images against all normal test images."""
    defect_types = sorted({s.defect_type for s in test if s.label == 1})
    return {defect: _types_metrics(test, preds, masks, {defect}) for defect in defect_types}


def seen_unseen_metrics(
    test: tuple[Sample, ...], preds: Predictions, masks: np.ndarray, seen_types: list[str] | None
) -> dict[str, dict] | None:
    """The four metrics on the defect types the run saw anomalies of, and on the others, each against all normal
    test images (DRA's seen / unseen split); None when the run records no seen types or one group is empty."""
    defect_types = {s.defect_type for s in test if s.label == 1}
    seen, unseen = defect_types & set(seen_types or ()), defect_types - set(seen_types or ())
    if not seen or not unseen:
        return None
    return {
        group: {"types": sorted(types), **_types_metrics(test, preds, masks, types)}
        for group, types in (("seen_types", seen), ("unseen_types", unseen))
    }


def at_thresholds(
    preds: Predictions,
    labels: np.ndarray,
    masks: np.ndarray,
    image_t: float | None,
    pixel_t: float | None,
    fitted: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """What a line engineer gets at fixed thresholds: image precision, recall and F1 of ``score > image_t``,
    the shares of good parts flagged and defective parts missed, the best F1 any threshold gives on this set
    (in hindsight, for comparison only) and, from the run's calibration record ``fitted`` (its out-of-sample
    ``normal_scores``), the false-alarm rate the threshold promises
    (:func:`~prnad.thresholds.false_alarm_promise`); pixel precision, recall and F1 of ``map > pixel_t`` over
    every test pixel, the share of good images with any pixel flagged and, from the held-out normals' largest
    pixels, how often that was promised (percent, with the counts). None when the model has no thresholds."""
    if image_t is None and pixel_t is None:
        return None
    fitted = fitted or {}
    out: dict[str, Any] = {"image_threshold": image_t, "pixel_threshold": pixel_t}
    for key, values, truth, t in (("image", preds.scores, labels, image_t), ("pixel", preds.maps, masks, pixel_t)):
        if t is not None:
            counts = decision_counts(values, truth, t)
            out[key] = {k: round(100.0 * v, 4) for k, v in precision_recall_f1(counts).items()} | counts
    if image_t is not None:
        out["image"] |= _line_shares(out["image"]) | {
            "f1_best": round(100.0 * f1_optimal_threshold(preds.scores, labels)[1], 4)
        }
        if fitted.get("normal_scores"):
            out["image"]["promise"] = false_alarm_promise(
                np.array(fitted["normal_scores"]), image_t, PROMISE_CONFIDENCE
            )
    if pixel_t is not None:
        good = labels == 0
        flagged = (preds.maps[good].reshape(int(good.sum()), -1) > pixel_t).any(1)  # (good images,)
        out["pixel"]["good_with_mask"] = round(100.0 * float(flagged.mean()), 4) if good.any() else None
        if fitted.get("normal_largest_pixels"):
            largest = np.array(fitted["normal_largest_pixels"])
            out["pixel"]["promise"] = false_alarm_promise(largest, pixel_t, PROMISE_CONFIDENCE)
    return out


def _line_shares(counts: dict[str, Any]) -> dict[str, float | None]:
    """What a line sees at an image threshold: the share of good parts flagged and of defective parts missed,
    in percent (None without parts of that kind)."""
    good, bad = counts["fp"] + counts["tn"], counts["tp"] + counts["fn"]
    return {
        "good_flagged": round(100.0 * counts["fp"] / good, 4) if good else None,
        "defective_missed": round(100.0 * counts["fn"] / bad, 4) if bad else None,
    }


def _rounded(metrics: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 4) for k, v in metrics.items()}


def evaluate_model(
    model: PRN,
    config: RunConfig,
    info: dict[str, Any],
    *,
    device: torch.device,
    data: str | Path | None = None,
    save_maps: str | Path | None = None,
    name: str = "the model",
    thresholds: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """Evaluate an inference-ready ``model`` (see :class:`prnad.Detector`); returns metrics.json's content.

    ``name`` says which model it is in error messages (its checkpoint file). ``thresholds`` (image, pixel)
    add the decision metrics at those thresholds (:func:`at_thresholds`).
    """
    root = Path(data or config.data.root)
    if data is None and not root.is_dir():
        raise DataError(
            f"{root}: the category folder this run trained on (its data.root) is not found from {Path.cwd()}; "
            "give the data to evaluate on (prnad evaluate RUN --data DIR, or detector.evaluate(DIR))"
        )
    own_data = data is None or Path(data).resolve() == Path(config.data.root).resolve()
    test = held_out_test_set(root, config, info, own_data=own_data)
    images, masks = load_samples(test, config.data.image_size)
    labels = np.array([s.label for s in test])
    preds = timed_predictions(model, images, device)
    check_finite(torch.from_numpy(preds.logits), name)
    metrics = compute_metrics(preds.scores, labels, preds.logits, masks)
    if save_maps is not None:
        write_maps(Path(save_maps), test, root, preds)
    return {
        "metrics": _rounded(metrics),
        "per_type": per_type_metrics(test, preds, masks),
        "seen_unseen": seen_unseen_metrics(test, preds, masks, info.get("seen_defect_types")),
        "at_threshold": at_thresholds(preds, labels, masks, *thresholds, info.get("thresholds") or {}),
        "inference_ms_per_image": round(float(np.mean(preds.ms)), 2),
        "inference_ms_median": round(float(statistics.median(preds.ms)), 2),
        "device": device_name(device),
        "engine": getattr(model, "name", "torch"),
        "test_images": len(test),
        "test_anomalous": int(labels.sum()),
        "seed": config.train.seed,
        "encoder": {"backbone": config.model.encoder.backbone, "weights": config.model.encoder.weights},
        "data": str(root),
        "train_info": info,
        "config": to_dict(config),
        "prnad_version": __version__,
    }


def write_metrics(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the metrics ({exc.strerror or exc})") from exc


def _threshold_lines(at: dict[str, Any]) -> list[str]:
    lines = []
    for key in ("image", "pixel"):
        if key in at:
            m = at[key]
            lines.append(
                f"{key} at threshold {at[key + '_threshold']:.4g}: precision {m['precision']:.1f}, "
                f"recall {m['recall']:.1f}, F1 {m['f1']:.1f}"
            )
    if "image" in at:
        lines.append(_line_summary(at["image"]))
    if at.get("pixel", {}).get("good_with_mask") is not None:
        pixel = at["pixel"]
        line = f"good parts with a non-empty mask {_percent(pixel['good_with_mask'])}"
        if pixel.get("promise"):
            promise = pixel["promise"]
            line += f" (expected {100 * promise['expected_rate']:.1f} %, at most {100 * promise['bound']:.1f} %)"
        lines.append(line)
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def _line_summary(image: dict[str, Any]) -> str:
    """Good parts flagged and defective parts missed at the image threshold, beside what the run promised."""
    line = (
        f"good parts flagged {_percent(image['good_flagged'])} ({image['fp']} of {image['fp'] + image['tn']}), "
        f"defective parts missed {_percent(image['defective_missed'])} ({image['fn']} of {image['tp'] + image['fn']})"
    )
    promise = image.get("promise")
    if promise:
        line += (
            f"; expected false alarms {100 * promise['expected_rate']:.1f} %, at most "
            f"{100 * promise['bound']:.1f} % with {100 * promise['confidence']:.0f} % confidence "
            f"(from {promise['normals']} held-out normals)"
        )
    return line + f"; best F1 in hindsight {image['f1_best']:.1f}"


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a small text table, in percent, then one line per defect type (and, where the run saw
    anomalies of some types only, one for the seen and one for the unseen types)."""
    lines = [f"{'metric':<16}{'value':>8}", "-" * 24]
    for key, name in METRIC_NAMES.items():
        value = result["metrics"][key]
        lines.append(f"{name:<16}{'n/a' if value is None else f'{value:.1f}':>8}")
    lines.append(f"{'ms / image':<16}{result['inference_ms_per_image']:>8.1f}")
    lines.append(
        f"test images: {result['test_images']} ({result['test_anomalous']} anomalous), device: {result['device']}"
    )
    if result.get("at_threshold"):
        lines += _threshold_lines(result["at_threshold"])
    rows = dict(result.get("per_type") or {})
    for group, m in (result.get("seen_unseen") or {}).items():
        rows[f"({group.replace('_', ' ')})"] = m
    if rows:
        lines.append(f"{'defect type':<24}{'images':>7}{'I-AUROC':>9}{'P-AUROC':>9}{'PRO':>7}{'AP':>7}")
        for defect, m in rows.items():
            cells = "".join(
                f"{'n/a' if m[k] is None else f'{m[k]:.1f}':>{w}}"
                for k, w in (("image_auroc", 9), ("pixel_auroc", 9), ("pro", 7), ("pixel_ap", 7))
            )
            lines.append(f"{defect:<24}{m['images']:>7}{cells}")
    return "\n".join(lines)
