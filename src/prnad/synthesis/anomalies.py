"""The three anomaly generators of PRN section 3.4: extended (EA), heterologous (HEA), homologous (HOA).

Each takes a normal uint8 (S, S, 3) image and returns ``(image, mask)``: the uint8 (S, S, 3) anomalous image
and its bool (S, S) mask, never empty. Pixels outside the mask are exactly the normal image's. Inside it the
anomaly source C is blended with the normal image N with opacity beta (PRN eq. 4, M binary):
``E = (1 - M) * N + (1 - beta) * M * C + beta * M * N``. When ``allowed`` (the object's foreground, bool
(S, S)) is given, the mask lies inside it. All randomness comes from ``rng``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from prnad.config import SynthConfig
from prnad.synthesis.color import random_color_ops
from prnad.synthesis.perlin import perlin_mask
from prnad.synthesis.shapes import target_area

EA_COLOR_OPS = 2  # [P] Aug1 of a seen anomaly: two random colour ops
SA_COLOR_OPS = 3  # [P] three random colour ops on the HEA texture; the same for the HOA source
ROTATE_DEGREES = 90.0  # EA rotation angle ~ U(-90, 90)
SHEAR_RANGE = 0.5  # EA shear factor ~ U(-0.5, 0.5) along x or y (about +-27 degrees)
SHIFT_FRACTION = 0.25  # EA shift ~ U(-0.25, 0.25) of the side, per axis


def _check_images(caller: str, normal: np.ndarray, *others: np.ndarray) -> int:
    """Side S of the square uint8 (S, S, 3) ``normal``; every other image must match it. Raises ValueError."""
    if normal.dtype != np.uint8 or normal.ndim != 3 or normal.shape[2] != 3 or normal.shape[0] != normal.shape[1]:
        raise ValueError(f"{caller}: expected a square uint8 (S, S, 3) normal image, got {normal.dtype} {normal.shape}")
    for other in others:
        if other.dtype != np.uint8 or other.shape != normal.shape:
            raise ValueError(
                f"{caller}: expected a uint8 {normal.shape} image like the normal one, got {other.dtype} {other.shape}"
            )
    return normal.shape[0]


def _check_mask(caller: str, name: str, mask: np.ndarray | None, size: int) -> None:
    if mask is not None and (mask.dtype != bool or mask.shape != (size, size)):
        raise ValueError(f"{caller}: {name} must be a bool ({size}, {size}) mask, got {mask.dtype} {mask.shape}")


def _big_enough(mask: np.ndarray, config: SynthConfig) -> bool:
    """A mask is kept when it is non-empty and covers at least ``config.min_anomaly_fraction`` of the image."""
    pixels = int(np.count_nonzero(mask))
    return pixels > 0 and pixels >= config.min_anomaly_fraction * mask.size


def _blend(normal: np.ndarray, source: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """PRN eq. 4 for a binary mask: (1 - beta) * C + beta * N inside ``mask``, N elsewhere; float, then rounded."""
    out = normal.copy()
    mixed = (1.0 - beta) * source[mask].astype(np.float32) + beta * normal[mask].astype(np.float32)  # (K, 3)
    out[mask] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def _spatial_matrix(size: int, rng: np.random.Generator) -> np.ndarray:
    """Forward 3x3 affine in pixel (x, y) coordinates: a random rotation, shear or shift about the image centre."""
    kind = int(rng.integers(3))
    linear = np.eye(3)
    if kind == 0:
        angle = math.radians(rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES))
        linear[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    elif kind == 1:
        axis = int(rng.integers(2))
        linear[axis, 1 - axis] = rng.uniform(-SHEAR_RANGE, SHEAR_RANGE)
    else:
        linear[:2, 2] = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2) * size
    centre = np.array([[1.0, 0.0, size / 2], [0.0, 1.0, size / 2], [0.0, 0.0, 1.0]])
    return centre @ linear @ np.linalg.inv(centre)


def _random_spatial(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random rotate/shear/shift on a uint8 (S, S, 3) image (bilinear) and its bool mask (nearest).

    Pixels brought in from outside the image are black and outside the mask.
    """
    inverse = np.linalg.inv(_spatial_matrix(image.shape[0], rng))  # PIL maps output pixels back to input
    data = tuple(inverse[:2].ravel().tolist())
    size = (image.shape[1], image.shape[0])
    moved = Image.fromarray(image).transform(size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    moved_mask = Image.fromarray(mask.astype(np.uint8)).transform(
        size, Image.Transform.AFFINE, data, Image.Resampling.NEAREST
    )
    return np.asarray(moved), np.asarray(moved_mask) > 0


def _area(size: int, rng: np.random.Generator, allowed: np.ndarray | None, config: SynthConfig) -> np.ndarray:
    """A target area (:func:`target_area`), or with ``config.target_areas`` off the whole image (Table 5)."""
    if not config.target_areas:
        return np.ones((size, size), dtype=bool)
    return target_area(size, rng, allowed=allowed, extent=config.target_area_size)


def extended_anomaly(
    normal: np.ndarray,
    seen_image: np.ndarray,
    seen_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    allowed: np.ndarray | None,
    config: SynthConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """EA: a seen anomaly, recoloured and moved, cropped by a target area and blended into ``normal``.

    A = two random colour ops on ``seen_image``; R = one random rotate/shear/shift of A and ``seen_mask``
    together; M = R's mask & a target area. An empty M (or one under ``config.min_anomaly_fraction`` of the image) redoes the spatial step, with a fresh target area
    too (a fixed area far from the defect could never be hit), up to ``config.max_tries`` times; then M falls
    back to the target area itself. beta ~ U(config.ea_opacity).
    """
    size = _check_images("extended_anomaly", normal, seen_image)
    _check_mask("extended_anomaly", "seen_mask", seen_mask, size)
    _check_mask("extended_anomaly", "allowed", allowed, size)
    coloured = random_color_ops(seen_image, rng, EA_COLOR_OPS)
    for _ in range(config.max_tries):
        moved, moved_mask = _random_spatial(coloured, seen_mask, rng)
        area = _area(size, rng, allowed, config)
        mask = moved_mask & area
        if _big_enough(mask, config):
            break
    else:
        mask = area
    beta = float(rng.uniform(*config.ea_opacity))
    return _blend(normal, moved, mask, beta), mask


def shuffle_patches(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Randomly permute the grid x grid square patches of a (S, S, 3) image (HOA's source of new structure).

    When S is not a multiple of ``grid``, the last S % grid rows and columns stay in place.
    """
    cell = image.shape[0] // grid
    if cell < 1:
        raise ValueError(f"shuffle_patches: a {grid}x{grid} grid does not fit a {image.shape[0]} px image")
    span = cell * grid
    patches = image[:span, :span].reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4)  # (g, g, c, c, 3)
    patches = patches.reshape(grid * grid, cell, cell, 3)[rng.permutation(grid * grid)]
    out = image.copy()
    out[:span, :span] = patches.reshape(grid, grid, cell, cell, 3).transpose(0, 2, 1, 3, 4).reshape(span, span, 3)
    return out


def _perlin_anomaly(
    normal: np.ndarray, source: np.ndarray, rng: np.random.Generator, allowed: np.ndarray | None, config: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``source`` into ``normal`` under a Perlin mask & target area, beta ~ U(config.sa_opacity).

    An empty intersection (or one under ``config.min_anomaly_fraction`` of the image) redraws both, up to ``config.max_tries`` times; then the mask is the target area.
    """
    size = normal.shape[0]
    for _ in range(config.max_tries):
        area = _area(size, rng, allowed, config)
        blobs = perlin_mask(size, rng, max_exponent=config.perlin_max_exponent, threshold=config.perlin_threshold)
        mask = blobs & area
        if _big_enough(mask, config):
            break
    else:
        mask = area
    beta = float(rng.uniform(*config.sa_opacity))
    return _blend(normal, source, mask, beta), mask


def heterologous_anomaly(
    normal: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
    *,
    allowed: np.ndarray | None,
    config: SynthConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """HEA: a foreign ``texture`` (uint8, shape of ``normal``), through three colour ops, in Perlin blobs."""
    size = _check_images("heterologous_anomaly", normal, texture)
    _check_mask("heterologous_anomaly", "allowed", allowed, size)
    return _perlin_anomaly(normal, random_color_ops(texture, rng, SA_COLOR_OPS), rng, allowed, config)


def homologous_anomaly(
    normal: np.ndarray,
    other_normal: np.ndarray,
    rng: np.random.Generator,
    *,
    allowed: np.ndarray | None,
    config: SynthConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """HOA: like HEA, but the source is a normal image of the same category, recoloured and patch-shuffled.

    The shuffle of its ``config.hoa_grid`` x ``config.hoa_grid`` patches keeps the category's own colours and
    local texture while breaking its global structure.
    """
    size = _check_images("homologous_anomaly", normal, other_normal)
    _check_mask("homologous_anomaly", "allowed", allowed, size)
    source = shuffle_patches(random_color_ops(other_normal, rng, SA_COLOR_OPS), config.hoa_grid, rng)
    return _perlin_anomaly(normal, source, rng, allowed, config)
