"""DRAEM-style Perlin noise and the thresholded, rotated masks that shape simulated anomalies (HEA, HOA).

The noise is classic 2-D gradient noise: a random unit gradient at every lattice corner, the dot products of
the four corner gradients with the offsets to a pixel, blended with the quintic fade 6t^5 - 15t^4 + 10t^3.
Unlike DRAEM's NumPy copy, the last interpolation uses the vertical fade for both rows (DRAEM mixes the
horizontal and vertical weights there).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _fade(t: np.ndarray) -> np.ndarray:
    """Quintic smoothstep: zero first and second derivatives at the lattice, so no grid seams show."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_coords(length: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell index and offset in [0, 1) inside the cell for each of ``length`` pixels; ``length % cells == 0``."""
    per_cell = length // cells
    pixels = np.arange(length)
    return pixels // per_cell, (pixels % per_cell).astype(np.float32) / per_cell


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise of ``shape`` (H, W) with ``res`` (rows, cols) lattice cells, float32 in about [-1, 1].

    A shape not divisible by ``res`` is generated on the next larger divisible grid and cropped, so any
    image size works with any power-of-two resolution.
    """
    (height, width), (res_y, res_x) = shape, res
    if min(height, width, res_y, res_x) < 1:
        raise ValueError(f"perlin_noise: shape and res must be positive, got shape={shape}, res={res}")
    padded_h, padded_w = math.ceil(height / res_y) * res_y, math.ceil(width / res_x) * res_x
    cell_y, off_y = _lattice_coords(padded_h, res_y)
    cell_x, off_x = _lattice_coords(padded_w, res_x)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(res_y + 1, res_x + 1))
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)

    def corner(dy: int, dx: int) -> np.ndarray:
        rows, cols = cell_y[:, None] + dy, cell_x[None, :] + dx
        return (off_y[:, None] - dy) * grad_y[rows, cols] + (off_x[None, :] - dx) * grad_x[rows, cols]  # (H, W)

    fade_y, fade_x = _fade(off_y)[:, None], _fade(off_x)[None, :]
    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top, bottom = n00 + fade_x * (n01 - n00), n10 + fade_x * (n11 - n10)
    noise = math.sqrt(2.0) * (top + fade_y * (bottom - top))  # 2-D gradient noise spans +-sqrt(1/2)
    return noise[:height, :width].astype(np.float32)


def perlin_mask(size: int, rng: np.random.Generator, *, max_exponent: int, threshold: float) -> np.ndarray:
    """Bool (size, size) blob mask: Perlin noise rotated by U(-90, 90) degrees, then ``noise > threshold``.

    Each axis gets its own lattice resolution 2**k, k uniform in [0, max_exponent), as in DRAEM, so the blobs
    range from one large smooth region to many small elongated ones. The rotation (bilinear, PIL on a float
    image, corners filled with 0) breaks the lattice's axis alignment.
    """
    res = 2 ** rng.integers(0, max_exponent, size=2)
    noise = perlin_noise((size, size), (int(res[0]), int(res[1])), rng)
    angle = float(rng.uniform(-90.0, 90.0))
    rotated = Image.fromarray(noise).rotate(angle, resample=Image.Resampling.BILINEAR)
    return np.asarray(rotated) > threshold
