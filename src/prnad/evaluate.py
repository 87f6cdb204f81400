"""Evaluation of a trained run on its category's test split (seen anomalies removed), at the training size.

Inference is timed per image at batch 1 from a tensor on the device to the anomaly map (prototype
matching included, image decoding excluded), after warm-up passes that are not counted.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prnad import __version__
from prnad.checkpoint import load_checkpoint
from prnad.config import to_dict
from prnad.data import Sample, load_samples, scan_category, split_seen_anomalies
from prnad.errors import DataError
from prnad.metrics import compute_metrics
from prnad.model import PRN
from prnad.model.prn import fused_for_inference
from prnad.training import RunPaths
from prnad.utils import device_name, resolve_device

WARMUP = 5
METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "pro": "PRO (30% FPR)",
    "pixel_ap": "pixel AP",
}


@dataclass
class Predictions:
    """Per test image: score (N,), anomaly map (N, S, S) float32, and forward times in ms (N,)."""

    scores: np.ndarray
    maps: np.ndarray
    ms: np.ndarray


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(model: PRN, images: np.ndarray, device: torch.device) -> Predictions:
    """Run ``model`` on (N, S, S, 3) uint8 images one at a time, timing each forward."""
    model.eval()
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    for _ in range(WARMUP):
        model(tensors[:1].to(device).float().div(255))
    scores, maps, ms = [], [], []
    for x in tensors:
        x = x[None].to(device).float().div(255)  # (1, 3, S, S)
        _sync(device)
        start = time.perf_counter()
        out = model(x)
        _sync(device)
        ms.append((time.perf_counter() - start) * 1000)
        scores.append(float(out.score[0]))
        maps.append(out.anomaly_map[0, 0].float().cpu().numpy())
    return Predictions(np.array(scores), np.stack(maps).astype(np.float32), np.array(ms))


def held_out_test_set(
    root: Path, seen_anomalies: int, seed: int, expected_seen: list[str] | None
) -> tuple[Sample, ...]:
    """The test samples left after removing the run's seen anomalies; checks they are the ones it trained on."""
    category = scan_category(root)
    seen, test = split_seen_anomalies(category.test, seen_anomalies, seed)
    got = [str(s.path.relative_to(category.root)) for s in seen]
    if expected_seen is not None and sorted(got) != sorted(expected_seen):
        raise DataError(
            f"{root}: the seen anomalies of seed {seed} differ from those the run trained on; the data changed"
        )
    if not test:
        raise DataError(f"{root}: no test images left after removing {seen_anomalies} seen anomalies")
    return test


def save_maps(out_dir: Path, test: tuple[Sample, ...], root: Path, preds: Predictions) -> None:
    """Write each map as float32 .npy at its image's path relative to test/, and scores.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample, score, amap in zip(test, preds.scores, preds.maps, strict=True):
        rel = sample.path.relative_to(root / "test").with_suffix(".npy")
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / rel, amap.astype(np.float32))
        rows.append((str(sample.path.relative_to(root / "test")), sample.label, f"{score:.6f}"))
    with (out_dir / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "score"])
        writer.writerows(rows)


def evaluate_run(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    save_maps_dir: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir``; writes ``metrics.json`` there and returns its content."""
    paths = RunPaths(Path(run_dir))
    if not paths.model.is_file():
        hint = " (training did not finish: resume it with prnad train --resume)" if paths.checkpoint.is_file() else ""
        raise DataError(f"{paths.model}: no trained model in {paths.root}{hint}")
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(paths.model, map_location=torch_device)
    config = ckpt.config
    root = Path(data_root or config.data.root)
    expected = ckpt.info.get("seen_anomalies") if data_root is None else None
    test = held_out_test_set(root, config.data.seen_anomalies, config.train.seed, expected)
    images, masks = load_samples(test, config.data.image_size)
    labels = np.array([s.label for s in test])
    preds = predict(fused_for_inference(ckpt.model), images, torch_device)
    metrics = compute_metrics(preds.scores, labels, preds.maps, masks)
    if save_maps_dir is not None:
        save_maps(Path(save_maps_dir), test, root, preds)
    result = {
        "metrics": metrics,
        "inference_ms_per_image": round(float(np.mean(preds.ms)), 2),
        "inference_ms_median": round(float(statistics.median(preds.ms)), 2),
        "device": device_name(torch_device),
        "test_images": len(test),
        "test_anomalous": int(labels.sum()),
        "seed": config.train.seed,
        "encoder": {"backbone": config.model.encoder.backbone, "weights": config.model.encoder.weights},
        "data": str(root),
        "train_info": ckpt.info,
        "config": to_dict(config),
        "prnad_version": __version__,
    }
    (paths.root / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a small text table, in percent."""
    lines = [f"{'metric':<16}{'value':>8}", "-" * 24]
    for key, name in METRIC_NAMES.items():
        value = result["metrics"][key]
        lines.append(f"{name:<16}{'n/a' if value is None else f'{value:.1f}':>8}")
    lines.append(f"{'ms / image':<16}{result['inference_ms_per_image']:>8.1f}")
    lines.append(
        f"test images: {result['test_images']} ({result['test_anomalous']} anomalous), device: {result['device']}"
    )
    return "\n".join(lines)
