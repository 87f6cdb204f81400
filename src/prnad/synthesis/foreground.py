"""Foreground of object categories and the object/texture decision (PRN section 3.4, estimation [C]).

Target areas of object categories must lie on the object, so the object is found in every normal image:
MVTec-style object images show one object in front of a fairly uniform background that fills the image
border. A pixel is foreground when its colour is far from the border's median colour, "far" being the Otsu
threshold of that distance over the image; morphology then removes specks and fills the object's interior.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

BORDER_FRACTION = 0.04  # width of the border frame, as a fraction of the side: background in object images
MORPH_FRACTION = 0.012  # radius of the closing/opening disc, as a fraction of the side (3 px at 256)
KEEP_FRACTION = 0.95  # keep the largest components until they cover this fraction of the foreground
CENTRE_FRACTION = 0.5  # side of the centre square, as a fraction of the image side
# Texture when the centre is less than CENTRE_BORDER_RATIO times as far from the border colour as the border
# itself is. Measured at 256 px: MVTec bottle (209 good images) 360 (its white border is flat, mean distance
# below 1 grey level, floored at 1); DTD, 20 images of one class as a category, 0.95 (crystalline) to 1.28
# (crosshatched) over all 10 classes in ../shared/data/dtd. 2.0 leaves a wide margin on both sides.
CENTRE_BORDER_RATIO = 2.0
TEXTURE_COVERAGE = 0.9  # ... or when the estimated foreground covers more than this fraction of the image


def _border_frame(size: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask of the frame of width BORDER_FRACTION of the shorter side (at least 1 px)."""
    width = max(1, round(BORDER_FRACTION * min(size)))
    frame = np.ones(size, dtype=bool)
    frame[width:-width, width:-width] = False
    return frame


def _border_distance(image: np.ndarray) -> np.ndarray:
    """Float32 (H, W): Euclidean RGB distance of every pixel to the median colour of the border frame."""
    pixels = image.astype(np.float32)
    background = np.median(pixels[_border_frame(image.shape[:2])], axis=0)  # (3,)
    return np.linalg.norm(pixels - background, axis=-1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the histogram of ``values`` that maximises the between-class variance.

    Returns the upper edge of the best lower class, so ``values > threshold`` is the upper class.
    """
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(hist).astype(np.float64)  # pixels at or below each cut
    weight_high = weight_low[-1] - weight_low
    moment_low = np.cumsum(hist * centres)
    mean_low = moment_low / np.maximum(weight_low, 1.0)
    mean_high = (moment_low[-1] - moment_low) / np.maximum(weight_high, 1.0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _disc(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def _largest_components(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected components until they hold KEEP_FRACTION of the mask's pixels."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]  # (count,), label 0 is the background
    order = np.argsort(sizes)[::-1]
    needed = int(np.searchsorted(np.cumsum(sizes[order]), KEEP_FRACTION * sizes.sum())) + 1
    keep = np.zeros(count + 1, dtype=bool)
    keep[order[:needed] + 1] = True
    return keep[labels]


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """Bool (H, W) foreground of a uint8 (H, W, 3) object image; all True when nothing is found.

    Otsu on the distance to the border colour, then closing (joins parts split by reflections), hole
    filling (dark or background-coloured interiors belong to the object), opening (removes specks) and the
    largest components. An empty estimate (a uniform image) becomes all True: with no object to find,
    anomalies may go anywhere rather than nowhere.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"estimate_foreground: expected an (H, W, 3) image, got shape {image.shape}")
    distance = _border_distance(image)
    mask = distance > otsu_threshold(distance)
    disc = _disc(max(1, round(MORPH_FRACTION * min(image.shape[:2]))))
    mask = ndimage.binary_closing(mask, structure=disc, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=disc)
    mask = _largest_components(mask)
    return mask if mask.any() else np.ones(image.shape[:2], dtype=bool)


def category_statistics(images: np.ndarray) -> dict[str, float]:
    """The two numbers :func:`detect_category_type` decides on, for uint8 (N, H, W, 3) normal images.

    ``centre_border_ratio``: mean over images of the mean distance to the border colour in the centre square,
    divided by the same mean in the border frame (floored at 1 grey level, so a perfectly flat border does
    not divide by 0). ``coverage``: mean fraction of the image the estimated foreground covers.
    """
    if images.ndim != 4 or images.shape[3] != 3 or len(images) == 0:
        raise ValueError(f"category_statistics: expected (N, H, W, 3) images with N >= 1, got shape {images.shape}")
    height, width = images.shape[1:3]
    frame = _border_frame((height, width))
    top, left = round(height * (1 - CENTRE_FRACTION) / 2), round(width * (1 - CENTRE_FRACTION) / 2)
    centre, border, coverage = [], [], []
    for image in images:
        distance = _border_distance(image)
        centre.append(distance[top : height - top, left : width - left].mean())
        border.append(distance[frame].mean())
        coverage.append(estimate_foreground(image).mean())
    ratio = float(np.mean(centre)) / max(float(np.mean(border)), 1.0)
    return {"centre_border_ratio": ratio, "coverage": float(np.mean(coverage))}


def detect_category_type(images: np.ndarray) -> Literal["object", "texture"]:
    """Call a category "texture" when its centre looks like its border or its foreground fills it, else "object".

    ``images``: uint8 (N, H, W, 3) normal images of one category. Thresholds: CENTRE_BORDER_RATIO and
    TEXTURE_COVERAGE.
    """
    stats = category_statistics(images)
    if stats["centre_border_ratio"] < CENTRE_BORDER_RATIO or stats["coverage"] > TEXTURE_COVERAGE:
        return "texture"
    return "object"


def foreground_masks(images: np.ndarray, category_type: Literal["object", "texture"]) -> np.ndarray:
    """Bool (N, H, W) where target areas may lie: the estimated object, or everywhere for textures."""
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"foreground_masks: expected (N, H, W, 3) images, got shape {images.shape}")
    if category_type not in ("object", "texture"):
        raise ValueError(f"foreground_masks: category_type must be 'object' or 'texture', got {category_type!r}")
    masks = np.ones(images.shape[:3], dtype=bool)
    if category_type == "object":
        for index, image in enumerate(images):
            masks[index] = estimate_foreground(image)
    return masks
