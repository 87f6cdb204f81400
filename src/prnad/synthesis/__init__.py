"""Anomaly synthesis (PRN section 3.4): extended, heterologous and homologous anomalies, and their parts.

Public API: uint8 RGB (H, W, 3) images and bool (H, W) masks in and out; randomness from a
``numpy.random.Generator`` passed in. :func:`synth_grid` draws a picture of generated samples for
``prnad synth --out synth.png``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from prnad.synthesis.anomalies import extended_anomaly, heterologous_anomaly, homologous_anomaly, shuffle_patches
from prnad.synthesis.color import COLOR_OPS, random_color_ops
from prnad.synthesis.foreground import (
    category_statistics,
    detect_category_type,
    estimate_foreground,
    foreground_masks,
    otsu_threshold,
)
from prnad.synthesis.perlin import perlin_mask, perlin_noise
from prnad.synthesis.shapes import target_area
from prnad.synthesis.textures import load_textures, procedural_textures

__all__ = [
    "COLOR_OPS",
    "category_statistics",
    "detect_category_type",
    "estimate_foreground",
    "extended_anomaly",
    "foreground_masks",
    "heterologous_anomaly",
    "homologous_anomaly",
    "load_textures",
    "otsu_threshold",
    "perlin_mask",
    "perlin_noise",
    "procedural_textures",
    "random_color_ops",
    "shuffle_patches",
    "synth_grid",
    "target_area",
]

GRID_GAP = 4  # px of black between the panels of a synth_grid picture
LABEL_PAD = 6  # px around a row label
LABEL_FONT_FRACTION = 0.08  # label text height as a fraction of the image height (readable at 64 and 256 px)


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, scaled to the row height where this Pillow (>= 10.1) can scale it."""
    try:
        return ImageFont.load_default(size=max(10, round(LABEL_FONT_FRACTION * height)))
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _label_panel(text: str, width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3): ``text`` in white on black, PIL's default font, vertically centred."""
    panel = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(panel)
    font = _font(height)
    bottom = draw.textbbox((0, 0), text, font=font)[3]
    draw.text((LABEL_PAD, max(0, (height - bottom) // 2)), text, fill=(255, 255, 255), font=font)
    return np.asarray(panel)


def synth_grid(normal: np.ndarray, results: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One uint8 RGB picture: a row per kind of ``results`` (label, normal, anomalous image, mask in white).

    ``normal``: the uint8 (H, W, 3) image the anomalies were made from; ``results``: kind name -> (uint8
    (H, W, 3) image, bool (H, W) mask). Rows follow the dict's order.
    """
    if not results:
        raise ValueError("synth_grid: no results to draw")
    height = normal.shape[0]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(measure.textbbox((0, 0), name, font=_font(height))[2] for name in results)
    gap = np.zeros((height, GRID_GAP, 3), dtype=np.uint8)
    rows = []
    for name, (image, mask) in results.items():
        mask_rgb = np.repeat(mask[..., None], 3, axis=2).astype(np.uint8) * 255  # (H, W, 3)
        panels = [_label_panel(name, label_width + 2 * LABEL_PAD, height), normal, image, mask_rgb]
        rows.append(np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1))
        rows.append(np.zeros((GRID_GAP, rows[-1].shape[1], 3), dtype=np.uint8))
    return np.concatenate(rows[:-1], axis=0)
