"""MVTec AD category folders: scanning, the seen-anomaly split of the protocol, loading, and a tiny writer.

Layout read by `scan_category`::

    <category>/train/good/*.png
    <category>/test/good/*.png                    normal test images
    <category>/test/<defect>/*.png                anomalous test images
    <category>/ground_truth/<defect>/<stem>_mask.png

Samples are sorted by their path as a string; defect types are sorted by name. A mask is looked up as
`<stem>_mask<suffix>` first (".png" first, then the other IMAGE_SUFFIXES, any case), then `<stem><suffix>`.
Files directly inside `test/` and hidden entries are ignored; every image folder that is scanned must hold
at least one image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from prnad.data.images import IMAGE_SUFFIXES, list_images, read_mask, read_rgb
from prnad.errors import DataError

NORMAL = "good"
_LOAD_THREADS = 2


@dataclass(frozen=True)
class Sample:
    """One image: its path, label (0 normal, 1 anomalous), defect type ("good" if normal) and mask path."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None


@dataclass(frozen=True)
class Category:
    """A scanned dataset: its root, its train (all normal) and test samples, the defective images of its
    training split where the layout has them (the seen anomalies are drawn from these, and the test split is
    left whole) and the layout it was read as (:mod:`prnad.data.layouts`)."""

    root: Path
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    train_anomalies: tuple[Sample, ...] = ()
    layout: str = "mvtec"

    @property
    def name(self) -> str:
        """The category's name: its root folder's name."""
        return self.root.name

    @property
    def defect_types(self) -> tuple[str, ...]:
        """Sorted defect types present in the test split ("good" excluded)."""
        return tuple(sorted({s.defect_type for s in self.test if s.label == 1}))


# ----------------------------------------------------------------------------------------------- scanning


def layout_hint(root: Path) -> str:
    """The MVTec AD tree a category folder should have, for error messages."""
    return (
        f"expected the MVTec AD layout:\n"
        f"  {root}/train/good/*.png\n"
        f"  {root}/test/good/*.png\n"
        f"  {root}/test/<defect>/*.png\n"
        f"  {root}/ground_truth/<defect>/<name>_mask.png"
    )


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: category folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a category folder)")
    missing = [name for name in ("train/good", "test") if not (root / name).is_dir()]
    if missing:
        raise DataError(f"{root}: missing {' and '.join(missing)}; {layout_hint(root)}")


def images_of(folder: Path) -> list[Path]:
    """The image files of ``folder``; a DataError naming it when it holds none."""
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no images (expected {'/'.join(IMAGE_SUFFIXES)} files)")
    return images


def _mask_index(mask_dir: Path) -> dict[tuple[str, str], Path]:
    """Mask files of a ground_truth folder keyed by (stem, lower-case suffix); empty if the folder is missing."""
    if not mask_dir.is_dir():
        return {}
    return {(p.stem, p.suffix.lower()): p for p in sorted(mask_dir.iterdir()) if p.is_file()}


def _find_mask(index: dict[tuple[str, str], Path], stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for suffix in IMAGE_SUFFIXES:
            if (name, suffix) in index:
                return index[(name, suffix)]
    return None


def _defect_samples(root: Path, defect_type: str, require_masks: bool) -> list[Sample]:
    mask_dir = root / "ground_truth" / defect_type
    index = _mask_index(mask_dir)
    samples = []
    for path in images_of(root / "test" / defect_type):
        mask = _find_mask(index, path.stem)
        if mask is None and require_masks:
            raise DataError(f"{path}: no mask; expected {mask_dir / (path.stem + '_mask.png')}")
        samples.append(Sample(path, 1, defect_type, mask))
    return samples


def _test_types(test_dir: Path) -> list[str]:
    types = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not types:
        raise DataError(f"{test_dir}: no sub-folders (expected test/good and test/<defect> folders of images)")
    return types


def scan_category(root: str | Path, *, require_masks: bool = True) -> Category:
    """Scan an MVTec AD category folder; a defect image without a mask is an error when `require_masks`."""
    root = Path(root)
    _check_layout(root)
    train = tuple(Sample(p, 0, NORMAL, None) for p in images_of(root / "train" / NORMAL))
    test: list[Sample] = []
    for defect_type in _test_types(root / "test"):
        if defect_type == NORMAL:
            test.extend(Sample(p, 0, NORMAL, None) for p in images_of(root / "test" / NORMAL))
        else:
            test.extend(_defect_samples(root, defect_type, require_masks))
    return Category(root, sorted_samples(train), sorted_samples(test))


def sorted_samples(samples: Sequence[Sample]) -> tuple[Sample, ...]:
    """Samples in the order every reader gives them: by path as a string."""
    return tuple(sorted(samples, key=lambda s: str(s.path)))


# ------------------------------------------------------------------------------------------------ protocol


def split_seen_anomalies(
    test: Sequence[Sample], n: int, seed: int, types: Sequence[str] | None = None
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """Take `n` seen anomalies out of `test` (spec, Protocol); returns (seen, remaining_test).

    All anomalous samples (defect types pooled; only those of ``types`` when given: DRA's hard setting) are
    sorted by path string and shuffled with `np.random.RandomState(seed).permutation`; the first `n` in that
    order are seen. The remaining test samples keep the order of `test`.
    """
    if n < 0:
        raise DataError(f"number of seen anomalies must be >= 0, got {n}")
    if n == 0:
        return (), tuple(test)
    defects = sorted((s for s in test if s.label == 1), key=lambda s: str(s.path))
    if types is not None:
        known = sorted({s.defect_type for s in defects})
        unknown = sorted(set(types) - set(known))
        if unknown:
            raise DataError(f"no defect type '{unknown[0]}' to draw seen anomalies from; types: {', '.join(known)}")
        defects = [s for s in defects if s.defect_type in types]
    if n > len(defects):
        raise DataError(f"asked for {n} seen anomalies but there are only {len(defects)} defect images to draw from")
    order = np.random.RandomState(seed).permutation(len(defects))
    seen = tuple(defects[i] for i in order[:n])
    seen_paths = {s.path for s in seen}
    return seen, tuple(s for s in test if s.path not in seen_paths)


def relative_paths(samples: Sequence[Sample], root: Path) -> list[str]:
    """Each sample's path relative to the category root, as a POSIX string (what runs record)."""
    return [s.path.relative_to(root).as_posix() for s in samples]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes: recognises a seen anomaly copied under another name."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seen_anomalies(
    category: Category, n: int, seed: int, types: Sequence[str] | None = None
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(seen, test): the seen anomalies drawn as :func:`split_seen_anomalies` draws them (of ``types`` only,
    when given), from the training split's defective images where the layout has them (the test split then
    stays whole), else from the test split (the paper's protocol: they leave it)."""
    if category.train_anomalies:
        seen, _ = split_seen_anomalies(category.train_anomalies, n, seed, types)
        return seen, category.test
    return split_seen_anomalies(category.test, n, seed, types)


def held_out_split(
    category: Category, n: int, seed: int, types: Sequence[str] | None = None
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """:func:`seen_anomalies`, then check that the test split left keeps both classes for evaluation, and
    that every seen anomaly has a mask to train on."""
    seen, test = seen_anomalies(category, n, seed, types)
    unmasked = [s.path for s in seen if s.mask_path is None]
    if unmasked:
        raise DataError(f"{unmasked[0]}: a seen anomaly needs its mask to train on; give the masks or 0 seen anomalies")
    total = sum(s.label for s in category.test)
    require_both_classes(
        test,
        category.root,
        why=f"after moving {n} of its {total} defect images to training; use fewer seen anomalies "
        f"(--seen-anomalies, below {total})",
    )
    return seen, test


def require_both_classes(test: Sequence[Sample], root: Path, *, why: str) -> None:
    """Evaluation needs normal and defect test images: raise a DataError naming the folder otherwise.

    ``why`` ends the message about missing defect images (what removed them).
    """
    labels = {s.label for s in test}
    if 0 not in labels:
        raise DataError(f"{root / 'test' / NORMAL}: no normal test images; evaluation needs test/good")
    if 1 not in labels:
        raise DataError(f"{root / 'test'}: no defect image is left to evaluate {why}")


# ------------------------------------------------------------------------------------------------- loading


def load_samples(samples: Sequence[Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode samples (2 threads): uint8 images (N, size, size, 3) and bool masks (N, size, size).

    A sample without mask gets an all-False mask. Read errors surface as DataError naming the file.
    """
    images = np.zeros((len(samples), size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(samples), size, size), dtype=bool)

    def load_one(i: int) -> None:
        images[i], original_wh = read_rgb(samples[i].path, size)
        if samples[i].mask_path is not None:
            masks[i] = read_mask(samples[i].mask_path, size, original_wh, require_defect=samples[i].label == 1)

    pool = ThreadPoolExecutor(max_workers=_LOAD_THREADS)
    try:
        for _ in pool.map(load_one, range(len(samples))):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return images, masks


# ------------------------------------------------------------------------------------------ tiny category


def _smooth_surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float RGB image in [0, 1]: a base colour, upsampled 4x4 noise and a mild linear gradient."""
    base = rng.uniform(0.35, 0.65, size=3)
    coarse = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8))
    noise = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255 - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    return np.clip(base + 0.15 * noise + 0.15 * gradient, 0.0, 1.0)


def _blob_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    ry, rx = rng.uniform(max(size / 12, 2), max(size / 6, 3), size=2)
    cy, cx = rng.uniform(size * 0.25, size * 0.75, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _line_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = rng.uniform(size * 0.15, size * 0.85, size=(2, 2))
    direction = end - start
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    t = ((yy - start[0]) * direction[0] + (xx - start[1]) * direction[1]) / max(direction @ direction, 1e-9)
    t = np.clip(t, 0.0, 1.0)
    dist = np.hypot(yy - (start[0] + t * direction[0]), xx - (start[1] + t * direction[1]))
    return dist <= max(size / 40, 1.0)


_DEFECT_SHAPES = (_line_mask, _blob_mask)


def _planted_defect(rng: np.random.Generator, size: int, shape_index: int) -> tuple[np.ndarray, np.ndarray]:
    """A normal surface with a contrasting blob or line; returns (uint8 RGB image, bool mask)."""
    surface = _smooth_surface(rng, size)
    mask = _DEFECT_SHAPES[shape_index % len(_DEFECT_SHAPES)](rng, size)
    if not mask.any():
        mask[size // 2, size // 2] = True
    colour = np.where(surface[mask].mean(axis=0) > 0.5, 0.05, 0.95)
    surface[mask] = colour
    return (surface * 255).round().astype(np.uint8), mask


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_tiny_category(
    root: Path,
    *,
    rng: np.random.Generator,
    size: int = 64,
    n_train: int = 8,
    n_good_test: int = 3,
    defect_types: dict[str, int] | None = None,
) -> Path:
    """Write a tiny synthetic category in MVTec AD layout under `root` and return `root`.

    Normal images are smooth random surfaces; the k-th defect type (default {"scratch": 3, "hole": 3})
    plants a line (k even) or a blob (k odd) of a contrasting colour, with its 0/255 mask in ground_truth.
    Deterministic given `rng`.
    """
    root = Path(root)
    defect_types = {"scratch": 3, "hole": 3} if defect_types is None else defect_types
    for split, count in (("train", n_train), ("test", n_good_test)):
        for i in range(count):
            _save(root / split / NORMAL / f"{i:03d}.png", (_smooth_surface(rng, size) * 255).round().astype(np.uint8))
    for k, (defect_type, count) in enumerate(defect_types.items()):
        for i in range(count):
            image, mask = _planted_defect(rng, size, k)
            _save(root / "test" / defect_type / f"{i:03d}.png", image)
            _save(root / "ground_truth" / defect_type / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root
