"""Target areas (PRN section 3.4): random shapes that say where a synthetic anomaly may appear.

Every shape is drawn as a PIL polygon: an ellipse as 48 points on its outline, a rectangle as its 4 corners,
and a random polygon as 3 to 8 vertices at sorted random angles around the centre (so it is star-shaped
around the centre and never self-intersects). Ellipses and rectangles get a random rotation.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "rectangle", "polygon")
ELLIPSE_POINTS = 48  # outline points of a drawn ellipse: smooth at 256 px
MIN_ASPECT = 0.4  # the short side of an ellipse or rectangle is at least this fraction of the long one


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (K, 2) x, y offsets by ``angle`` radians about the origin."""
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _outline(kind: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) x, y vertex offsets from the centre of a shape that fits in the circle of ``radius``."""
    if kind == "polygon":
        count = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, size=count))
        radii = radius * rng.uniform(0.5, 1.0, size=count)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    aspect = rng.uniform(MIN_ASPECT, 1.0)
    if kind == "circle":
        angles = np.linspace(0.0, 2.0 * math.pi, ELLIPSE_POINTS, endpoint=False)
        points = np.stack([radius * np.cos(angles), aspect * radius * np.sin(angles)], axis=1)
    else:  # corners on the circle: the half-diagonal is the radius
        half_x, half_y = radius * np.array([1.0, aspect]) / math.hypot(1.0, aspect)
        points = np.array([[-half_x, -half_y], [half_x, -half_y], [half_x, half_y], [-half_x, half_y]])
    return _rotate(points, rng.uniform(0.0, math.pi))


def _random_centre(size: int, rng: np.random.Generator, allowed: np.ndarray | None) -> tuple[int, int]:
    """(row, col) drawn uniformly from the True pixels of ``allowed``, or from the whole image."""
    if allowed is None:
        return int(rng.integers(size)), int(rng.integers(size))
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        raise ValueError("target_area: the allowed mask is empty, so no target area can lie inside it")
    row, col = divmod(int(candidates[rng.integers(candidates.size)]), size)
    return row, col


def target_area(
    size: int, rng: np.random.Generator, *, allowed: np.ndarray | None, extent: tuple[float, float]
) -> np.ndarray:
    """Bool (size, size) mask of one random circle, rectangle or polygon, restricted to ``allowed``.

    ``extent`` bounds the diameter of the circle the shape fits in, as a fraction of the image side. The centre is drawn from
    ``allowed`` (the object's foreground, shape (size, size)) or anywhere when ``allowed`` is None (textures).
    The centre pixel is always set, so the result is never empty even for a zero extent.
    """
    if allowed is not None and allowed.shape != (size, size):
        raise ValueError(f"target_area: allowed must have shape ({size}, {size}), got {allowed.shape}")
    row, col = _random_centre(size, rng, allowed)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = 0.5 * size * rng.uniform(*extent)
    points = _outline(kind, radius, rng) + np.array([col, row])
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points.tolist()], fill=1)
    mask = np.asarray(canvas) > 0
    mask[row, col] = True
    return mask if allowed is None else mask & allowed
