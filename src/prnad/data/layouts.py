"""Readers for the dataset layouts people have; each gives one :class:`~prnad.data.mvtec.Category`.

A Category is the one description training, evaluation and reports read: its root, the normal training
images, the test images (normal and defective, with masks and defect types) and, for layouts whose training
split holds defective images (DAGM 2007, KolektorSDD2), those ``train_anomalies``: the seen anomalies are
drawn from them and the test split is left untouched. Paths are recorded relative to the root.

Layouts (``data.layout``; ``auto`` recognises every one but ``folder`` by its tree):

- ``mvtec``: ``train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png`` (MVTec AD, and VisA or
  others converted to it).
- ``mvtec3d``: MVTec 3D-AD, RGB only: ``train/good/rgb``, ``test/<type>/rgb``, ``test/<type>/gt`` (same names).
- ``btad``: one BTAD product: ``train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko`` (masks matched by
  stem: products mix ``.bmp`` and ``.png``).
- ``dagm``: one DAGM 2007 class: ``Train`` and ``Test``, each with ``Label/Labels.txt`` (a header line, then
  ``id  defective  image  -  mask`` per image, tab-separated) and ``Label/<stem>_label.PNG`` masks (coarse
  ellipses) for the defective images.
- ``ksdd2``: KolektorSDD2: ``train`` and ``test`` with ``N.png`` and its mask ``N_GT.png``; an image is
  defective when its mask has a non-zero pixel.
- ``visa``: one VisA object: ``<object>/Data/Images/Normal|Anomaly``, ``Data/Masks/Anomaly``, split by
  ``<visa>/split_csv/1cls.csv`` (``object,split,label,image,mask``, paths relative to the VisA root).
- ``folder``: your own folders, below the root: ``normal_dir`` (good images), ``abnormal_dir`` (defective
  ones), ``mask_dir`` (their masks by stem, with or without ``_mask``; optional), ``normal_test_dir`` (good
  test images; without it, ``NORMAL_TEST_SHARE`` of the normal images are kept for testing, drawn once with
  ``RandomState(0)``, so that runs of every seed evaluate on the same images).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from prnad.config import LAYOUTS
from prnad.data.images import list_images
from prnad.data.mvtec import NORMAL, Category, Sample, images_of, layout_hint, scan_category, sorted_samples
from prnad.errors import DataError

if TYPE_CHECKING:
    from prnad.config import DataConfig

NORMAL_TEST_SHARE = 0.2  # of the normal images, kept for testing by the folder layout without normal_test_dir
DEFECT = "defect"  # the defect type of layouts that do not name types


def _by_stem(folder: Path | None, suffixes: tuple[str, ...] = ("", "_mask")) -> Callable[[Path], Path | None]:
    """A lookup of the mask of an image in ``folder`` by the image's stem plus one of ``suffixes``, any image
    extension (BTAD's products mix .bmp and .png); None without a folder or a match."""
    files = {} if folder is None or not folder.is_dir() else {p.stem: p for p in list_images(folder)}

    def find(image: Path) -> Path | None:
        return next((files[image.stem + s] for s in suffixes if image.stem + s in files), None)

    return find


def _defects(paths: list[Path], defect_type: str, mask_of: Callable[[Path], Path | None]) -> list[Sample]:
    samples = []
    for path in paths:
        mask = mask_of(path)
        if mask is None:
            raise DataError(f"{path}: no mask found for this defect image")
        samples.append(Sample(path, 1, defect_type, mask))
    return samples


def _normals(paths: list[Path]) -> list[Sample]:
    return [Sample(p, 0, NORMAL, None) for p in paths]


# ------------------------------------------------------------------------------------------------- readers


def read_mvtec3d(root: Path) -> Category:
    """MVTec 3D-AD, RGB images only (the depth maps are not read)."""
    train = _normals(images_of(root / "train" / NORMAL / "rgb"))
    test: list[Sample] = []
    for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = images_of(folder / "rgb")
        if folder.name == NORMAL:
            test += _normals(images)
        else:
            test += _defects(images, folder.name, _by_stem(folder / "gt"))
    return Category(root, sorted_samples(train), sorted_samples(test))


def read_btad(root: Path) -> Category:
    """One BTAD product (``01``, ``02`` or ``03``)."""
    train = _normals(images_of(root / "train" / "ok"))
    test = _normals(images_of(root / "test" / "ok"))
    test += _defects(images_of(root / "test" / "ko"), "ko", _by_stem(root / "ground_truth" / "ko"))
    return Category(root, sorted_samples(train), sorted_samples(test))


def _dagm_split(folder: Path) -> tuple[list[Sample], list[Sample]]:
    """(normals, defects) of a DAGM ``Train`` or ``Test`` folder, from its ``Label/Labels.txt``."""
    labels = folder / "Label" / "Labels.txt"
    if not labels.is_file():
        raise DataError(f"{labels}: not found (expected DAGM 2007's Label/Labels.txt)")
    normals, defects = [], []
    for number, line in enumerate(labels.read_text().splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3 or fields[1] not in ("0", "1"):
            raise DataError(f"{labels}: line {number} is not 'id, 0 or 1, image, ..., mask': {line!r}")
        image = folder / fields[2]
        if fields[1] == "0":
            normals.append(Sample(image, 0, NORMAL, None))
            continue
        if len(fields) < 5:
            raise DataError(f"{labels}: line {number} marks {fields[2]} defective but names no mask")
        defects.append(Sample(image, 1, DEFECT, folder / "Label" / fields[4]))
    return normals, defects


def _with_train_anomalies(root: Path, train: Path, test: Path, split: Callable[[Path], tuple[list, list]]) -> Category:
    """A Category of a layout whose training split holds defective images: ``split`` gives (normals, defects) of
    a split folder; the training defects become the pool of seen anomalies, the test split stays whole."""
    train_normals, train_defects = split(train)
    test_normals, test_defects = split(test)
    return Category(
        root, sorted_samples(train_normals), sorted_samples(test_normals + test_defects), sorted_samples(train_defects)
    )


def read_dagm(root: Path) -> Category:
    """One DAGM 2007 class: the training split's defective images are the pool of seen anomalies."""
    return _with_train_anomalies(root, root / "Train", root / "Test", _dagm_split)


def _ksdd2_split(folder: Path) -> tuple[list[Sample], list[Sample]]:
    """(normals, defects) of a KolektorSDD2 split: a defect image's ``_GT`` mask has a non-zero pixel."""
    images = [p for p in images_of(folder) if not p.stem.endswith("_GT")]
    mask_of = _by_stem(folder, ("_GT",))
    normals, defects = [], []
    for image in images:
        mask = mask_of(image)
        if mask is None:
            raise DataError(f"{image}: no mask {image.stem}_GT.png beside it (KolektorSDD2 gives every image one)")
        with Image.open(mask) as m:
            defective = m.convert("L").getbbox() is not None
        if defective:
            defects.append(Sample(image, 1, DEFECT, mask))
        else:
            normals.append(Sample(image, 0, NORMAL, None))
    return normals, defects


def read_ksdd2(root: Path) -> Category:
    """KolektorSDD2: the training split's defective images are the pool of seen anomalies."""
    return _with_train_anomalies(root, root / "train", root / "test", _ksdd2_split)


def _visa_rows(root: Path) -> list[dict[str, str]]:
    split = root.parent / "split_csv" / "1cls.csv"
    if not split.is_file():
        raise DataError(f"{split}: not found (VisA's split file, beside the object folders)")
    with split.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("object") == root.name]
    if not rows:
        raise DataError(f"{split}: no rows for object {root.name!r}")
    return rows


def read_visa(root: Path) -> Category:
    """One VisA object, split by ``split_csv/1cls.csv``."""
    train, test = [], []
    for row in _visa_rows(root):
        image = root.parent / row["image"]
        if row["label"] == "normal":
            sample = Sample(image, 0, NORMAL, None)
        else:
            sample = Sample(image, 1, "anomaly", root.parent / row["mask"])
        (train if row["split"] == "train" else test).append(sample)
    if any(s.label for s in train):
        raise DataError(f"{root.parent / 'split_csv' / '1cls.csv'}: anomalies in the train split of {root.name}")
    return Category(root, sorted_samples(train), sorted_samples(test))


def read_folder(
    root: Path,
    normal_dir: str,
    abnormal_dir: str | None,
    mask_dir: str | None = None,
    normal_test_dir: str | None = None,
) -> Category:
    """Your own folders below ``root`` (see the module)."""
    normals = images_of(root / normal_dir)
    if normal_test_dir is not None:
        train, test_normals = normals, images_of(root / normal_test_dir)
    else:
        k = max(1, round(NORMAL_TEST_SHARE * len(normals)))
        if k >= len(normals):
            raise DataError(f"{root / normal_dir}: too few normal images to keep {k} for testing; give normal_test_dir")
        held = set(np.random.RandomState(0).permutation(len(normals))[:k].tolist())
        train = [p for i, p in enumerate(normals) if i not in held]
        test_normals = [p for i, p in enumerate(normals) if i in held]
    test = _normals(test_normals)
    if abnormal_dir is not None:
        defects = images_of(root / abnormal_dir)
        if mask_dir is None:  # image labels only: no pixel metrics, and no seen anomalies to train on
            test += [Sample(p, 1, DEFECT, None) for p in defects]
        else:
            test += _defects(defects, DEFECT, _by_stem(root / mask_dir))
    return Category(root, sorted_samples(_normals(train)), sorted_samples(test))


# --------------------------------------------------------------------------------------------- detection

_SIGNS: tuple[tuple[str, Callable[[Path], bool]], ...] = (
    ("mvtec3d", lambda r: (r / "train" / NORMAL / "rgb").is_dir()),
    ("btad", lambda r: (r / "train" / "ok").is_dir() and (r / "test" / "ko").is_dir()),
    ("dagm", lambda r: (r / "Train" / "Label" / "Labels.txt").is_file()),
    ("ksdd2", lambda r: (r / "train").is_dir() and any((r / "train").glob("*_GT.png"))),
    ("visa", lambda r: (r / "Data" / "Images" / "Normal").is_dir()),
    ("mvtec", lambda r: (r / "train" / NORMAL).is_dir() and (r / "test").is_dir()),
)


def detect_layout(root: Path) -> str:
    """The layout whose tree ``root`` has (the first of mvtec3d, btad, dagm, ksdd2, visa, mvtec)."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    for name, matches in _SIGNS:
        if matches(root):
            return name
    raise DataError(
        f"{root}: no known dataset layout (MVTec AD, MVTec 3D-AD, BTAD, DAGM 2007, KolektorSDD2, VisA; for your own "
        f"folders give --layout folder with --normal-dir and --abnormal-dir); {layout_hint(root)}"
    )


READERS: dict[str, Callable[[Path], Category]] = {
    "mvtec": scan_category,
    "mvtec3d": read_mvtec3d,
    "btad": read_btad,
    "dagm": read_dagm,
    "ksdd2": read_ksdd2,
    "visa": read_visa,
}


def scan_dataset(
    root: str | Path,
    layout: str = "auto",
    *,
    normal_dir: str | None = None,
    abnormal_dir: str | None = None,
    mask_dir: str | None = None,
    normal_test_dir: str | None = None,
) -> Category:
    """Read the dataset at ``root`` in ``layout`` (``auto``: recognised by its tree, or ``folder`` when
    ``normal_dir`` is given); the Category records which layout it was read as."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "folder" if normal_dir is not None else detect_layout(root)
    if layout == "folder":
        if normal_dir is None:
            raise DataError(f"{root}: the folder layout needs normal_dir (--normal-dir), the folder of good images")
        category = read_folder(root, normal_dir, abnormal_dir, mask_dir, normal_test_dir)
    else:
        if not root.is_dir():
            raise DataError(f"{root}: data folder not found")
        category = READERS[layout](root)
    return replace(category, layout=layout)


def scan_data(data: DataConfig, root: str | Path | None = None) -> Category:
    """The dataset a run's ``data`` config names (at ``root`` instead of ``data.root`` when given)."""
    return scan_dataset(
        data.root if root is None else root,
        data.layout,
        normal_dir=data.normal_dir,
        abnormal_dir=data.abnormal_dir,
        mask_dir=data.mask_dir,
        normal_test_dir=data.normal_test_dir,
    )
