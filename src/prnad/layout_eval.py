"""An evaluation set of layout anomalies (parts removed, moved, rotated) made from a category's normal test
images, in the MVTec AD layout so that ``prnad evaluate RUN --data SET`` measures it.

The set's ``train/good`` and ``test/good`` are links to the category's own folders (evaluation scans them; no
training reads this set), and ``test/<kind>/NNN.png`` with ``ground_truth/<kind>/NNN_mask.png`` are made from
the normal test images in order, each with a generator seeded by (seed, kind, index).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from prnad.data import read_rgb_full, scan_category
from prnad.errors import DataError
from prnad.synthesis import detect_category_type, estimate_foreground
from prnad.synthesis.layout import KINDS, layout_anomaly, save_pair


def _link(source: Path, target: Path) -> None:
    """``target`` as a symbolic link to the folder ``source`` (a copy where links are not allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target, target_is_directory=True)
    except OSError:
        shutil.copytree(source, target)


def write_layout_set(data: str | Path, out: str | Path, *, seed: int = 0, per_kind: int | None = None) -> Path:
    """Write the layout-anomaly set of the category folder ``data`` into ``out`` (which must not exist):
    ``per_kind`` anomalies of each kind (default: one per normal test image). Returns ``out``."""
    category, out = scan_category(data), Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; give a new folder for the layout set")
    normals = [s.path for s in category.test if s.label == 0]
    images = [read_rgb_full(p) for p in normals]
    kind_of_category = detect_category_type(np.stack([_small(i) for i in images]))
    foregrounds = [
        estimate_foreground(i) if kind_of_category == "object" else np.ones(i.shape[:2], bool) for i in images
    ]
    _link(category.root / "train" / "good", out / "train" / "good")
    _link(category.root / "test" / "good", out / "test" / "good")
    made = {}
    for k, kind in enumerate(KINDS):
        (out / "test" / kind).mkdir(parents=True)
        (out / "ground_truth" / kind).mkdir(parents=True)
        made[kind] = _write_kind(out, kind, k, images, foregrounds, seed, per_kind or len(images))
    record = {"source": str(category.root.resolve()), "seed": seed, "category_type": kind_of_category, "made": made}
    (out / "layout_set.json").write_text(json.dumps(record, indent=2))
    return out


def _small(image: np.ndarray, size: int = 128) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _write_kind(out: Path, kind: str, k: int, images: list, foregrounds: list, seed: int, count: int) -> int:
    """Write up to ``count`` anomalies of ``kind``, going round the normal images; returns how many."""
    written = 0
    for i in range(count * 2):  # an image with too little foreground gives none: go on to the next
        if written == count:
            break
        j = i % len(images)
        made = layout_anomaly(images[j], foregrounds[j], kind, np.random.default_rng([seed, k, i]))
        if made is not None:
            save_pair(
                *made,
                out / "test" / kind / f"{written:03d}.png",
                out / "ground_truth" / kind / f"{written:03d}_mask.png",
            )
            written += 1
    return written
