"""Scoring new images into a folder: per image a float32 map (.npy), a heatmap PNG, and one row of scores.csv.

Streams: images are read, scored and written ``batch_size`` at a time, and scores.csv is flushed after
every batch, so a long folder is never held in memory and an interrupted run keeps what it wrote. A bad
input (unreadable, corrupt, missing) gets a row with its error and the others go on.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from prnad.data import list_images, read_rgb_full
from prnad.errors import DataError, PrnadError
from prnad.inference import Detector, Prediction


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the images inside named folders (sorted).

    A name that is neither a file nor a folder, or a folder without images, stays in the list as it is,
    so that it is reported as a failed input in order.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        found = list_images(item) if item.is_dir() else []
        paths += found if found else [item]
    return paths


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the image with the map (in [0, 1], same H, W) over it in red, opacity following the map."""
    alpha = np.clip(anomaly_map, 0.0, 1.0)[..., None] * 0.6  # (H, W, 1)
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255.0
    return np.round((1 - alpha) * image + alpha * red).astype(np.uint8)


def _stems(files: list[Path]) -> list[str]:
    """Output name per input: its stem, prefixed with its index when two inputs share a stem."""
    unique = len({f.stem for f in files}) == len(files)
    return [f.stem if unique else f"{i:04d}_{f.stem}" for i, f in enumerate(files)]


def _write_outputs(out: Path, stem: str, prediction: Prediction) -> None:
    np.save(out / f"{stem}.npy", prediction.anomaly_map)
    overlay = heatmap_overlay(read_rgb_full(Path(prediction.source)), prediction.anomaly_map)
    Image.fromarray(overlay).save(out / f"{stem}_heatmap.png")


def _open_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.csv").touch()
    except OSError as exc:
        raise DataError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from exc


def predict_to_folder(
    detector: Detector, inputs: Sequence[str | Path], out_dir: str | Path, *, batch_size: int = 16
) -> Iterator[Prediction]:
    """Score every input image (files, or folders of images) and write its outputs into ``out_dir``.

    Yields each :class:`Prediction` as soon as its batch is written; failed inputs carry their error.
    """
    out = Path(out_dir)
    _open_out(out)
    files = collect_images(inputs)
    stems = iter(_stems(files))
    with (out / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "error"])
        for prediction in detector.predict_iter(files, batch_size=batch_size, skip_errors=True):
            stem = next(stems)
            if prediction.ok:
                try:
                    _write_outputs(out, stem, prediction)
                except PrnadError as exc:  # the file changed between scoring and re-reading it
                    prediction = Prediction(prediction.source, float("nan"), None, str(exc))
            score = "" if not prediction.ok else f"{prediction.score:.17g}"
            writer.writerow([prediction.source, score, prediction.error or ""])
            f.flush()
            yield prediction
