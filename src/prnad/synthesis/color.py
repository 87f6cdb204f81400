"""Random colour operations (PRN's Aug1): they give seen anomalies and textures new colours and contrasts.

Every op maps a uint8 RGB image (H, W, 3) to a new uint8 RGB image of the same shape and draws its own
parameters from the ``numpy.random.Generator`` it is given. The ranges below are our choice [C], close to
DRAEM's augmenters (gamma (0.5, 2) per channel as there; solarize and posterize wider, to vary more).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ColorOp = Callable[[np.ndarray, np.random.Generator], np.ndarray]

GAMMA_RANGE = (0.5, 2.0)  # gamma contrast, drawn per channel (as DRAEM's per_channel=True) for hue shifts too
SOLARIZE_RANGE = (32, 224)  # threshold: pixels above it are inverted
POSTERIZE_BITS = (1, 6)  # bits kept per channel (inclusive); 7 or 8 would barely change the image
SHARPNESS_RANGE = (0.0, 3.0)  # 0 blurs, 1 is the identity, 3 over-sharpens


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image))


def _equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.equalize(_pil(image)))


def _solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.solarize(_pil(image), threshold=int(rng.integers(*SOLARIZE_RANGE))))


def _posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = int(rng.integers(POSTERIZE_BITS[0], POSTERIZE_BITS[1] + 1))
    return np.asarray(ImageOps.posterize(_pil(image), bits))


def _sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = float(rng.uniform(*SHARPNESS_RANGE))
    return np.asarray(ImageEnhance.Sharpness(_pil(image)).enhance(factor))


def _autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(ImageOps.autocontrast(_pil(image)))


def _invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - image


def _gamma(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """out = 255 * (in / 255) ** gamma through a (3, 256) lookup table, one gamma per channel."""
    gammas = rng.uniform(*GAMMA_RANGE, size=3)
    levels = np.arange(256, dtype=np.float64) / 255.0
    tables = np.round(255.0 * levels[None, :] ** gammas[:, None]).astype(np.uint8)  # (3, 256)
    return np.stack([tables[c][image[..., c]] for c in range(3)], axis=-1)


COLOR_OPS: dict[str, ColorOp] = {
    "equalize": _equalize,
    "solarize": _solarize,
    "posterize": _posterize,
    "sharpness": _sharpness,
    "autocontrast": _autocontrast,
    "invert": _invert,
    "gamma": _gamma,
}


def random_color_ops(image: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Apply ``n`` distinct ops of :data:`COLOR_OPS`, picked and ordered at random, to a uint8 (H, W, 3) image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"random_color_ops: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if not 0 <= n <= len(COLOR_OPS):
        raise ValueError(f"random_color_ops: n must be in [0, {len(COLOR_OPS)}], got {n}")
    names = sorted(COLOR_OPS)
    for index in rng.choice(len(names), size=n, replace=False):
        image = COLOR_OPS[names[index]](image, rng)
    return np.ascontiguousarray(image)
