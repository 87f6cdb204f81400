"""Scoring new images into a folder: per image the raw map (.npy), a binary mask PNG and an overlay PNG,
and one row of results.csv and one line of results.jsonl (score, decision, error).

Streams: images are read, scored and written ``batch_size`` at a time, and both results files are flushed
after every image, so a long folder is never held in memory and an interrupted run keeps what it wrote. A
bad input (unreadable, corrupt, missing) gets a row with its error and the others go on. Without thresholds
(a run trained with ``threshold.holdout_fraction: 0`` and none given) there is no decision and no mask.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from prnad.data import list_images, read_rgb_full
from prnad.errors import DataError, PrnadError
from prnad.inference import Detector, Prediction, check_batch_size


def images_below(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders (hidden ones skipped), sorted by relative path."""
    found = list_images(folder)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += images_below(sub)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def collect_images(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(image file, output name) for the files named directly and the images inside named folders (and
    their sub-folders: ``bottle/test`` gives every defect type). A file's name is its stem; an image found
    in a folder is named by its path below that folder (``broken_large/000.png`` -> ``broken_large_000``).

    A name that is neither a file nor a folder, or a folder without images, stays in the list as it is,
    so that it is reported as a failed input in order.
    """
    found: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        below = images_below(item) if item.is_dir() else []
        if below:
            found += [(p, "_".join(p.relative_to(item).with_suffix("").parts)) for p in below]
        else:
            found.append((item, item.stem))
    return found


CONTOUR_RGB = (255, 255, 0)  # yellow: stands out against the red heat and most parts


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 (H, W, 3): the image with the map (in [0, 1], same H, W) over it in red, opacity following the
    map, and the outline of ``mask`` (bool (H, W)) drawn in yellow, 1 px inside its border."""
    alpha = np.clip(anomaly_map, 0.0, 1.0)[..., None] * 0.6  # (H, W, 1)
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255.0
    out = np.round((1 - alpha) * image + alpha * red).astype(np.uint8)
    if mask is not None and mask.any():
        outline = mask & ~ndimage.binary_erosion(mask, border_value=0)  # (H, W)
        out[outline] = CONTOUR_RGB
    return out


def _unique(names: list[str]) -> list[str]:
    """Output names as given, or each prefixed with its index when two inputs would share one."""
    return names if len(set(names)) == len(names) else [f"{i:04d}_{n}" for i, n in enumerate(names)]


def _write_outputs(out: Path, stem: str, prediction: Prediction) -> None:
    np.save(out / f"{stem}.npy", prediction.anomaly_map)
    if prediction.mask is not None:
        Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(out / f"{stem}_mask.png")
    overlay = heatmap_overlay(read_rgb_full(Path(prediction.source)), prediction.anomaly_map, prediction.mask)
    Image.fromarray(overlay).save(out / f"{stem}_overlay.png")


RESULT_FIELDS = ("path", "score", "is_anomalous", "anomalous_pixels", "error")


def result_row(prediction: Prediction) -> dict[str, object]:
    """One results record: the path, score, decision, share of pixels in the mask, and the error (if any)."""
    mask = prediction.mask
    return {
        "path": prediction.source,
        "score": prediction.score if prediction.ok else None,
        "is_anomalous": prediction.is_anomalous,
        "anomalous_pixels": None if mask is None else round(float(mask.mean()), 6),
        "error": prediction.error,
    }


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.17g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _open_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.csv").touch()
    except OSError as exc:
        raise DataError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from exc


def predict_to_folder(
    detector: Detector,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
) -> Iterator[Prediction]:
    """Score every input image (files, or folders of images) and write its outputs into ``out_dir``.

    ``threshold`` and ``pixel_threshold`` replace the detector's. Yields each :class:`Prediction` as soon
    as its outputs are written; failed inputs carry their error. The arguments are checked at the call,
    before the output folder is touched: a bad call writes nothing.
    """
    check_batch_size(batch_size)
    limits = {"threshold": threshold, "pixel_threshold": pixel_threshold}
    return _write_predictions(detector, collect_images(inputs), Path(out_dir), batch_size, limits)


def _write_predictions(
    detector: Detector, found: list[tuple[Path, str]], out: Path, batch_size: int, limits: dict[str, float | None]
) -> Iterator[Prediction]:
    _open_out(out)
    files = [path for path, _ in found]
    stems = iter(_unique([name for _, name in found]))
    with (out / "results.csv").open("w", newline="") as table, (out / "results.jsonl").open("w") as lines:
        writer = csv.writer(table)
        writer.writerow(RESULT_FIELDS)
        for prediction in detector.predict_iter(files, batch_size=batch_size, skip_errors=True, **limits):
            stem = next(stems)
            if prediction.ok:
                try:
                    _write_outputs(out, stem, prediction)
                except PrnadError as exc:  # the file changed between scoring and re-reading it
                    prediction = Prediction(prediction.source, float("nan"), None, str(exc))
            row = result_row(prediction)
            writer.writerow([_csv_cell(row[k]) for k in RESULT_FIELDS])
            lines.write(json.dumps(row) + "\n")
            table.flush()
            lines.flush()
            yield prediction
