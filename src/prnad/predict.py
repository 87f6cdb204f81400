"""``prnad predict``: score new images with a trained run and write their anomaly maps and heatmaps."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from prnad.checkpoint import load_checkpoint
from prnad.data import list_images, read_rgb
from prnad.errors import DataError
from prnad.evaluate import predict
from prnad.model.prn import fused_for_inference
from prnad.training import RunPaths
from prnad.utils import resolve_device


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly, plus the images inside named folders (sorted); errors name the input."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DataError(f"{item}: no images in this folder")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return paths


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3): the image with the map (in [0, 1]) laid over it in red, opacity following the map."""
    alpha = np.clip(anomaly_map, 0.0, 1.0)[..., None] * 0.6  # (S, S, 1)
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255.0
    return np.round((1 - alpha) * image + alpha * red).astype(np.uint8)


def predict_images(
    run_dir: str | Path, inputs: list[str | Path], out_dir: str | Path, *, device: str = "auto"
) -> list[tuple[str, float]]:
    """Write ``<stem>.npy`` (float32 map), ``<stem>_heatmap.png`` and ``scores.csv`` for every input image."""
    paths = RunPaths(Path(run_dir))
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(paths.model, map_location=torch_device)
    files = collect_images(inputs)
    size = ckpt.config.data.image_size
    images = np.stack([read_rgb(f, size)[0] for f in files])  # (N, S, S, 3) uint8
    preds = predict(fused_for_inference(ckpt.model), images, torch_device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (file, score) in enumerate(zip(files, preds.scores, strict=True)):
        stem = f"{i:04d}_{file.stem}" if len({f.stem for f in files}) < len(files) else file.stem
        np.save(out / f"{stem}.npy", preds.maps[i])
        Image.fromarray(heatmap_overlay(images[i], preds.maps[i])).save(out / f"{stem}_heatmap.png")
        rows.append((str(file), float(score)))
    with (out / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score"])
        writer.writerows((p, f"{s:.6f}") for p, s in rows)
    return rows
