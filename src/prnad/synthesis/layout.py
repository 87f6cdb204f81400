"""Layout anomalies: a part of the object removed, moved or rotated, for an evaluation set of defects of layout.

Texture anomalies (scratches, stains) change what a patch looks like; a layout anomaly leaves every patch
looking normal and changes where things are: a part missing, misplaced or turned the wrong way. These are made
from normal test images to measure how well a model sees them; they are never training data.

A "part" is the object's foreground inside a square box of side ``PART_FRACTION`` of the image, centred on a
foreground pixel. Masks mark where the part should be and, when moved, where it landed: the MVTec AD
convention for missing and misplaced parts.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("removed", "moved", "rotated")
PART_FRACTION = 0.2  # side of a part's box, as a share of the image side
MIN_PART_FRACTION = 0.15  # a box whose foreground is below this share of its area holds no part worth moving


def _part_box(foreground: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int] | None:
    """(top, left, side) of a square box centred on a random foreground pixel, inside the image, holding at
    least MIN_PART_FRACTION foreground; None after 50 tries."""
    h, w = foreground.shape
    side = max(4, round(PART_FRACTION * min(h, w)))
    ys, xs = np.nonzero(foreground)
    if len(ys) == 0:
        return None
    for _ in range(50):
        i = int(rng.integers(len(ys)))
        top = int(np.clip(ys[i] - side // 2, 0, h - side))
        left = int(np.clip(xs[i] - side // 2, 0, w - side))
        if foreground[top : top + side, left : left + side].mean() >= MIN_PART_FRACTION:
            return top, left, side
    return None


def _background_fill(image: np.ndarray, foreground: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) uint8 background pixels drawn at random from the image's background (the median colour of
    the border when the image has no background pixel)."""
    background = image[~foreground]  # (B, 3)
    if len(background) == 0:
        background = np.median(np.concatenate([image[0], image[-1]]), axis=0, keepdims=True).astype(np.uint8)
    return background[rng.integers(len(background), size=count)]


def layout_anomaly(
    image: np.ndarray, foreground: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """A copy of ``image`` (H, W, 3) uint8 with one part (see the module) ``removed`` (its pixels replaced by
    background pixels), ``moved`` (removed, then pasted at another place, on the background where there is
    room) or ``rotated`` (turned by 90, 180 or 270 degrees in its box), and its mask (H, W) bool. ``foreground``
    (H, W) bool is the object's. None when the image has no part to take (too little foreground)."""
    if kind not in KINDS:
        raise ValueError(f"layout anomaly kind must be one of {', '.join(KINDS)}, got {kind!r}")
    box = _part_box(foreground, rng)
    if box is None:
        return None
    top, left, side = box
    window = (slice(top, top + side), slice(left, left + side))
    part = np.zeros_like(foreground)
    part[window] = foreground[window]  # (H, W) the part's pixels
    if kind == "rotated":
        return _rotated(image, foreground, window, rng)
    out = image.copy()
    out[part] = _background_fill(image, foreground, int(part.sum()), rng)
    if kind == "removed":
        return out, part
    return _pasted(out, image, part, window, foreground, rng)


def _rotated(
    image: np.ndarray, foreground: np.ndarray, window: tuple[slice, slice], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    turns = int(rng.integers(1, 4))  # 90, 180 or 270 degrees
    out = image.copy()
    out[window] = np.rot90(image[window], turns)
    mask = np.zeros_like(foreground)
    mask[window] = foreground[window] | np.rot90(foreground[window], turns)  # where the part was and is now
    return out, mask


def _pasted(
    removed: np.ndarray,
    image: np.ndarray,
    part: np.ndarray,
    window: tuple[slice, slice],
    foreground: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``removed`` with the part of ``image`` pasted at the random place (of 50 tries) whose box holds the
    least foreground other than the part itself, at least a box side away; mask: old and new places."""
    h, w = part.shape
    side = window[0].stop - window[0].start
    rest = foreground & ~part
    best, best_overlap = None, np.inf
    for _ in range(50):
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        far = abs(top - window[0].start) >= side or abs(left - window[1].start) >= side
        overlap = rest[top : top + side, left : left + side].mean()
        if far and overlap < best_overlap:
            best, best_overlap = (top, left), overlap
    if best is None:  # no place a box side away (a tiny image): the opposite corner
        best = (h - side - window[0].start, w - side - window[1].start)
    top, left = best
    target = (slice(top, top + side), slice(left, left + side))
    shape = part[window]  # (side, side) the part's pixels in its box
    out = removed.copy()
    out[target][shape] = image[window][shape]
    mask = part.copy()
    mask[target] |= shape
    return out, mask


def save_pair(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    """Write an anomaly image (PNG, RGB) and its mask (PNG, 0/255)."""
    Image.fromarray(image).save(image_path)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
