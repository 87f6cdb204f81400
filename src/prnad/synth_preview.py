"""``prnad synth``: one picture of each kind of generated anomaly for a category (EA, HEA, HOA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prnad.config import SynthConfig
from prnad.data import load_samples, scan_dataset
from prnad.data import seen_anomalies as draw_seen
from prnad.synthesis import (
    detect_category_type,
    extended_anomaly,
    foreground_masks,
    heterologous_anomaly,
    homologous_anomaly,
    load_textures,
    procedural_textures,
    synth_grid,
)


def write_preview(
    data: str | Path,
    out: str | Path,
    *,
    textures: str | None,
    seed: int,
    seen_anomalies: int,
    image_size: int,
    category_type: str,
) -> Path:
    """Generate one anomaly of each kind from the same normal image and write the grid picture to ``out``."""
    rng = np.random.default_rng(seed)
    category = scan_dataset(data)
    seen, _ = draw_seen(category, seen_anomalies, seed)
    normals, _ = load_samples(category.train, image_size)
    kind = detect_category_type(normals) if category_type == "auto" else category_type
    foreground = foreground_masks(normals, kind)
    tex = load_textures(textures, image_size) if textures else procedural_textures(8, image_size, rng)
    i, j = (int(v) for v in rng.integers(len(normals), size=2))
    config, allowed = SynthConfig(), foreground[i]
    results = {}
    if seen:
        seen_images, seen_masks = load_samples(seen, image_size)
        results["EA"] = extended_anomaly(normals[i], seen_images[0], seen_masks[0], rng, allowed=allowed, config=config)
    results["HEA"] = heterologous_anomaly(
        normals[i], tex[int(rng.integers(len(tex)))], rng, allowed=allowed, config=config
    )
    results["HOA"] = homologous_anomaly(normals[i], normals[j], rng, allowed=allowed, config=config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synth_grid(normals[i], results)).save(out)
    return out
