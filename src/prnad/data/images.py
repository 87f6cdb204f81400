"""Reading images and masks from disk: RGB uint8 images and boolean masks at a square size.

Choices where the spec is silent: 16-bit grey images are scaled to 8 bits (top byte) before the RGB
conversion, instead of PIL's clipping at 255, whether they come as a path, a PIL image or a uint16 array; masks are read as 'L' as they are (16-bit masks are clipped,
which keeps `> 0` exact). Truncated files are errors: `ImageFile.LOAD_TRUNCATED_IMAGES` stays off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prnad.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_decoded(path: Path, mode: str) -> Image.Image:
    """Open `path`, decode all of it and convert to `mode`; any failure is a DataError naming the file."""
    if path.is_dir():
        raise DataError(_folder_message(path))
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return rgb_image(im) if mode == "RGB" else im.convert(mode)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image (truncated or not an image file: {exc})") from exc


def _folder_message(path: Path) -> str:
    """What is wrong with a folder given where an image file is expected, saying whether it holds images."""
    count = len(list_images(path))
    if not count:
        return f"{path}: a folder with no images in it, not an image file"
    return (
        f"{path}: a folder (of {count} images), not an image file; give its image files, or the folder to "
        "prnad predict / prnad.predict_folder, which read folders"
    )


def rgb_image(image: Image.Image) -> Image.Image:
    """A PIL image as RGB: 16-bit grey scaled to 8 bits by its top byte (PIL's own conversion would clip every
    value above 255 to white), grey and RGBA converted by PIL."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def read_rgb(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as RGB resized to (size, size) with BILINEAR.

    Returns the uint8 array (size, size, 3) and the original (width, height).
    """
    return _square(_open_decoded(Path(path), "RGB"), size)


def _square(image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB image resized to (size, size) with BILINEAR as uint8, and its original (width, height)."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy(), image.size


def read_rgb_full(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) at its own size (for overlays); errors name the file."""
    return np.asarray(_open_decoded(Path(path), "RGB"), dtype=np.uint8).copy()


def read_mask(path: Path, size: int, expected_wh: tuple[int, int], *, require_defect: bool = False) -> np.ndarray:
    """Read a mask as grey, check it is `expected_wh` (its image's size), resize with NEAREST, return `> 0`.

    With `require_defect` (the mask of a defect image), an all-zero mask is an error: it would count the
    image as anomalous with no anomalous pixel, silently.
    """
    path = Path(path)
    im = _open_decoded(path, "L")
    if tuple(im.size) != tuple(expected_wh):
        raise DataError(
            f"{path}: mask is {im.size[0]}x{im.size[1]} but its image is {expected_wh[0]}x{expected_wh[1]} "
            "(width x height); a mask must have its image's size"
        )
    if require_defect and im.getbbox() is None:
        raise DataError(f"{path}: the mask of a defect image is all zero (no defect pixel marked)")
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


def image_from_array(array: np.ndarray, name: str) -> Image.Image:
    """A PIL RGB image from an (H, W, 3) or (H, W) array: uint8, uint16 (its top byte) or float in [0, 1];
    errors name ``name``."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # RGBA: the alpha channel is not part of the picture
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))) or min(array.shape[:2]) < 1:
        raise DataError(f"{name}: expected an (H, W, 3) RGB or (H, W) grey array, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise DataError(f"{name}: a float image must hold values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)  # 16-bit: the top byte, as for 16-bit image files
    elif array.dtype != np.uint8:
        raise DataError(f"{name}: expected a uint8 or uint16 image (or float in [0, 1]), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def to_rgb(image: Image.Image | np.ndarray | str | Path, size: int, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Any supported image input as uint8 (size, size, 3) resized with BILINEAR, and its original (width, height).

    Paths are read with :func:`read_rgb`; PIL images and arrays are converted the same way (grey and RGBA to RGB).
    """
    if isinstance(image, str | Path):
        return read_rgb(Path(image), size)
    if isinstance(image, Image.Image):
        image = rgb_image(image)
    elif isinstance(image, np.ndarray):
        image = image_from_array(image, name)
    else:
        raise DataError(f"{name}: expected a path, a PIL image or an array, got {type(image).__name__}")
    return _square(image, size)
