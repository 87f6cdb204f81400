"""Reading images and masks from disk: RGB uint8 images and boolean masks at a square size.

Choices where the spec is silent: 16-bit grey images are scaled to 8 bits (top byte) before the RGB
conversion, instead of PIL's clipping at 255; masks are read as 'L' as they are (16-bit masks are clipped,
which keeps `> 0` exact). Truncated files are errors: `ImageFile.LOAD_TRUNCATED_IMAGES` stays off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prnad.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_decoded(path: Path, mode: str) -> Image.Image:
    """Open `path`, decode all of it and convert to `mode`; any failure is a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "RGB" and im.mode in _SIXTEEN_BIT_MODES:
                return Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8)).convert("RGB")
            return im.convert(mode)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image (truncated or not an image file: {exc})") from exc


def read_rgb(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as RGB resized to (size, size) with BILINEAR.

    Returns the uint8 array (size, size, 3) and the original (width, height).
    """
    path = Path(path)
    im = _open_decoded(path, "RGB")
    original_wh = im.size
    resized = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy(), original_wh


def read_mask(path: Path, size: int, expected_wh: tuple[int, int]) -> np.ndarray:
    """Read a mask as grey, check it is `expected_wh` (its image's size), resize with NEAREST, return `> 0`."""
    path = Path(path)
    im = _open_decoded(path, "L")
    if tuple(im.size) != tuple(expected_wh):
        raise DataError(
            f"{path}: mask is {im.size[0]}x{im.size[1]} but its image is {expected_wh[0]}x{expected_wh[1]} "
            "(width x height); a mask must have its image's size"
        )
    resized = im.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


def list_images(folder: Path) -> list[Path]:
    """Image files in `folder` (suffix in IMAGE_SUFFIXES, any case), hidden files skipped, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
