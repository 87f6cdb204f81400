"""Texture images for heterologous anomalies (HEA): loaded from a folder (e.g. DTD) or made procedurally.

Both return uint8 (N, size, size, 3) RGB arrays, ready to be blended into normal images of side ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from prnad.errors import DataError
from prnad.synthesis.perlin import perlin_noise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FREQUENCY_RANGE = (3.0, 24.0)  # periods per image side of stripes, checks and dots
GRAIN_STD = 6.0  # grey levels of pixel noise on every procedural texture, so no region is perfectly flat


def _square_resized(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, resize to (size, size) and return uint8 (size, size, 3) RGB."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def _read_texture(path: Path, size: int) -> np.ndarray:
    """One texture file as uint8 (size, size, 3); a file PIL cannot decode raises DataError naming it."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
            return _square_resized(image, size)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read texture image ({exc})") from exc


def load_textures(folder: str | Path, size: int) -> np.ndarray:
    """Every image under ``folder`` (recursively, sorted paths), as uint8 (N, size, size, 3).

    Suffixes: IMAGE_SUFFIXES, any case. Non-square images are centre-cropped first so textures are not
    stretched. A folder without images, or that does not exist, raises DataError naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: texture folder does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"{folder}: no texture images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return np.stack([_read_texture(path, size) for path in paths])


def _rotated_grid(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) coordinates u, v in image sides, rotated by a random angle, so patterns are not axis-bound."""
    angle = rng.uniform(0.0, math.pi)
    coords = np.arange(size, dtype=np.float32) / size
    ys, xs = coords[:, None], coords[None, :]
    return xs * math.cos(angle) + ys * math.sin(angle), ys * math.cos(angle) - xs * math.sin(angle)


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    u, _ = _rotated_grid(size, rng)
    wave = np.sin(2.0 * math.pi * rng.uniform(*FREQUENCY_RANGE) * u + rng.uniform(0.0, 2.0 * math.pi))
    return 0.5 + 0.5 * (np.sign(wave) if rng.random() < 0.5 else wave)  # square or sine profile


def _checks(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _rotated_grid(size, rng)
    frequency = rng.uniform(*FREQUENCY_RANGE)
    return (np.sin(2.0 * math.pi * frequency * u) * np.sin(2.0 * math.pi * frequency * v) > 0).astype(np.float32)


def _dots(size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _rotated_grid(size, rng)
    frequency, radius = rng.uniform(*FREQUENCY_RANGE), rng.uniform(0.15, 0.45)
    du, dv = (u * frequency) % 1.0 - 0.5, (v * frequency) % 1.0 - 0.5  # offset to the nearest lattice centre
    return (du**2 + dv**2 < radius**2).astype(np.float32)


def _fractal(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of Perlin octaves (lattice 2, 4, 8, ..., halving amplitudes), rescaled to [0, 1]."""
    octaves = int(rng.integers(2, 6))
    noise = sum(0.5**k * perlin_noise((size, size), (2 ** (k + 1), 2 ** (k + 1)), rng) for k in range(octaves))
    return (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)


PATTERNS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "stripes": _stripes,
    "checks": _checks,
    "dots": _dots,
    "fractal": _fractal,
}


def _colourise(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a float (H, W) pattern in [0, 1] onto the segment between two random colours, plus grain: uint8 RGB."""
    low, high = rng.uniform(0.0, 255.0, size=(2, 3))
    image = low + pattern[..., None] * (high - low) + rng.normal(0.0, GRAIN_STD, size=(*pattern.shape, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def procedural_textures(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` varied uint8 (size, size, 3) textures, for HEA when the user has no texture folder.

    Each is a random pattern of :data:`PATTERNS` (stripes, checks, dots with random frequency, phase and
    rotation; fractal Perlin noise) painted between two random colours.
    """
    if n < 1 or size < 1:
        raise ValueError(f"procedural_textures: n and size must be >= 1, got n={n}, size={size}")
    names = sorted(PATTERNS)
    kinds = rng.integers(len(names), size=n)
    return np.stack([_colourise(PATTERNS[names[k]](size, rng), rng) for k in kinds])
