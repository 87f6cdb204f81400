"""``prnad demo``: a small synthetic category, trained and evaluated on the CPU in a few minutes, offline.

The category is a procedural "part": a textured disc (a washer seen from above) on a plain background,
with a little jitter in position, size and brightness from image to image. Defects are planted with
their masks: scratches (thin dark lines), stains (soft coloured blobs) and chips (a bite out of the rim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from prnad.config import RunConfig, build_config
from prnad.evaluate import format_table
from prnad.inference import Detector

DEMO_COUNTS = {"train": 60, "good": 12, "scratch": 8, "stain": 8, "chip": 8}
DEMO_DEFAULTS = {"image_size": 128, "iterations": 300, "batch_size": 8, "seen_anomalies": 6, "lr": 1e-3}


def _part(rng: np.random.Generator, size: int) -> tuple[Image.Image, tuple[float, float, float]]:
    """A normal part: textured disc with a hole; returns the image and its (cx, cy, radius)."""
    background = np.full((size, size, 3), 225 + rng.normal(0, 3), dtype=np.float64)
    grain = np.asarray(
        Image.fromarray((rng.random((size // 4, size // 4)) * 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        ),
        dtype=np.float64,
    )
    cx, cy = size / 2 + rng.normal(0, size / 60, 2)
    radius = size * (0.36 + rng.normal(0, 0.005))
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.hypot(xx - cx, yy - cy)
    disc = (dist <= radius) & (dist >= radius * 0.35)
    metal = np.array([110.0, 115.0, 125.0]) * (1 + rng.normal(0, 0.03)) + 0.12 * (grain[..., None] - 128)
    rings = 6 * np.sin(dist / size * 60)[..., None]
    image = np.where(disc[..., None], metal + rings, background)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), (cx, cy, radius)


def _plant(
    kind: str, image: Image.Image, geometry: tuple[float, float, float], rng: np.random.Generator
) -> tuple[Image.Image, np.ndarray]:
    """Paint one defect of ``kind`` on the part; returns the image and the defect's mask (bool, on the part)."""
    size = image.size[0]
    cx, cy, radius = geometry
    shape = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(shape)
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "chip":  # a bite out of the outer rim, showing the background
        ex, ey, s = cx + radius * np.cos(angle), cy + radius * np.sin(angle), size * rng.uniform(0.06, 0.09)
        draw.ellipse([ex - s, ey - s, ex + s, ey + s], fill=255)
        colour = np.array([225, 225, 225])
    else:
        r = radius * rng.uniform(0.5, 0.85)
        px, py = cx + r * np.cos(angle), cy + r * np.sin(angle)
        if kind == "scratch":  # a dark line
            dx, dy = rng.normal(0, size * 0.15, 2)
            draw.line([(px, py), (px + dx, py + dy)], fill=255, width=max(2, size // 48))
            colour = np.array([35, 35, 40])
        else:  # stain: a rust-coloured blotch
            s = size * rng.uniform(0.06, 0.1)
            draw.ellipse([px - s, py - s * 0.7, px + s, py + s * 0.7], fill=255)
            colour = rng.integers([140, 60, 20], [200, 110, 60])
    mask = (np.asarray(shape) > 0) & _on_part(size, geometry)
    pixels = np.array(image)
    pixels[mask] = colour
    return Image.fromarray(pixels), mask


def _on_part(size: int, geometry: tuple[float, float, float]) -> np.ndarray:
    """bool (size, size): the disc of the part (hole included)."""
    cx, cy, radius = geometry
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(xx - cx, yy - cy) <= radius


def write_demo_category(root: Path, *, size: int, seed: int) -> Path:
    """Write the synthetic category in MVTec AD layout under ``root`` (deterministic given ``seed``)."""
    rng = np.random.default_rng(seed)
    for split, folder, count in (("train", "good", DEMO_COUNTS["train"]), ("test", "good", DEMO_COUNTS["good"])):
        for i in range(count):
            path = root / split / folder / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _part(rng, size)[0].save(path)
    for kind in ("scratch", "stain", "chip"):
        for i in range(DEMO_COUNTS[kind]):
            image, mask = _plant(kind, *_part(rng, size), rng)
            for path, picture in (
                (root / "test" / kind / f"{i:03d}.png", image),
                (root / "ground_truth" / kind / f"{i:03d}_mask.png", Image.fromarray(mask.astype(np.uint8) * 255)),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
    return root


def demo_config(
    data_root: Path, *, seed: int, iterations: int | None, image_size: int | None, device: str, overrides: dict | None
) -> RunConfig:
    """The demo's config: small and fast; ``overrides`` (a nested dict, e.g. from CLI flags) win."""
    base = {
        "data": {
            "root": str(data_root),
            "image_size": image_size or DEMO_DEFAULTS["image_size"],
            "seen_anomalies": DEMO_DEFAULTS["seen_anomalies"],
        },
        "model": {"encoder": {"weights": "random"}},
        "train": {
            "iterations": iterations or DEMO_DEFAULTS["iterations"],
            "batch_size": DEMO_DEFAULTS["batch_size"],
            "lr": DEMO_DEFAULTS["lr"],
            "seed": seed,
            "checkpoint_every": 100,
            "device": device,
        },
    }
    return build_config(base, overrides or {})


def run_demo(
    out: Path,
    *,
    seed: int = 0,
    iterations: int | None = None,
    image_size: int | None = None,
    device: str = "auto",
    overrides: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Make the data, train, evaluate; print progress and the metrics table. Returns the evaluation result."""
    from prnad.training import train

    size = image_size or DEMO_DEFAULTS["image_size"]
    data_root = out / "data" / "washer"
    config = demo_config(
        data_root, seed=seed, iterations=iterations, image_size=size, device=device, overrides=overrides
    )  # checked before anything is written
    write_demo_category(data_root, size=size, seed=seed)
    print(f"demo data written to {data_root}")
    weights = config.model.encoder.weights
    print(
        f"training {config.model.encoder.backbone} PRN ({weights} encoder weights) for {config.train.iterations} steps ..."
    )
    train(config, out / "run", overwrite=overwrite, progress=progress)
    detector = Detector.from_run(out / "run", device=config.train.device)
    result = detector.evaluate(save_maps=out / "run" / "maps")
    print(format_table(result))
    return result
