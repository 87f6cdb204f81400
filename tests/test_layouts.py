"""Every dataset layout prnad reads, each written by a fixture in its exact published layout (awkward parts
included: mixed extensions, upper-case suffixes, masks with and without a suffix, empty masks, a split file)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prnad
from prnad.cli import main
from prnad.data import detect_layout, scan_dataset, seen_anomalies
from tests.conftest import FAST_TRAIN

SIZE = 64


def _image(path: Path, seed: int, defect: bool = False) -> np.ndarray:
    """A smooth random picture (with a dark square when ``defect``); returns its mask (bool)."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(80, 180, (4, 4, 3)), np.ones((SIZE // 4, SIZE // 4, 1))).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    if defect:
        mask[20:30, 24:40] = True
        base[mask] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(base).save(path)
    return mask


def _mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_folder(root: Path) -> Path:
    for i in range(10):
        _image(root / "good" / f"g{i}.png", i)
    for i in range(4):
        mask = _image(root / "bad" / f"b{i}.jpg", 100 + i, defect=True)
        _mask(root / "masks" / (f"b{i}_mask.png" if i % 2 else f"b{i}.png"), mask)  # both naming habits
    return root


def write_btad(root: Path) -> Path:
    """Product 01's habit: .bmp images, .png masks."""
    for i in range(6):
        _image(root / "train" / "ok" / f"{i:04d}.bmp", i)
    for i in range(2):
        _image(root / "test" / "ok" / f"{i:04d}.bmp", 50 + i)
    for i in range(3):
        _mask(
            root / "ground_truth" / "ko" / f"{i:04d}.png", _image(root / "test" / "ko" / f"{i:04d}.bmp", 90 + i, True)
        )
    return root


def write_dagm(root: Path) -> Path:
    """A DAGM 2007 class: Train and Test, each with Label/Labels.txt and Label/<stem>_label.PNG."""
    for split, offset in (("Train", 0), ("Test", 500)):
        rows = ["1"]  # the header line
        for i in range(8):
            stem, defect = f"{offset + i:04d}", i % 3 == 0
            mask = _image(root / split / f"{stem}.PNG", offset + i, defect)
            if defect:
                _mask(root / split / "Label" / f"{stem}_label.PNG", mask)
            rows.append(f"{i + 1}\t{int(defect)}\t{stem}.PNG\t0\t{stem + '_label.PNG' if defect else ''}")
        (root / split / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")
    return root


def write_ksdd2(root: Path) -> Path:
    """KolektorSDD2: N.png beside N_GT.png; a defect image is one whose mask is non-empty."""
    for split, offset in (("train", 10000), ("test", 20000)):
        for i in range(7):
            defect = i % 3 == 1
            mask = _image(root / split / f"{offset + i}.png", offset + i, defect)
            _mask(root / split / f"{offset + i}_GT.png", mask)
    return root


def write_visa(visa: Path) -> Path:
    """A VisA object and its split file beside it; returns the object folder."""
    rows = []
    for i in range(8):
        split = "train" if i < 6 else "test"
        _image(visa / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", i)
        rows.append(["candle", split, "normal", f"candle/Data/Images/Normal/{i:04d}.JPG", ""])
    for i in range(3):
        mask = _image(visa / "candle" / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", 70 + i, True)
        _mask(visa / "candle" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", mask)
        rows.append(
            [
                "candle",
                "test",
                "anomaly",
                f"candle/Data/Images/Anomaly/{i:03d}.JPG",
                f"candle/Data/Masks/Anomaly/{i:03d}.png",
            ]
        )
    rows.append(["capsules", "train", "normal", "capsules/Data/Images/Normal/0000.JPG", ""])  # another object
    (visa / "split_csv").mkdir(parents=True)
    with (visa / "split_csv" / "1cls.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
    return visa / "candle"


def write_mvtec3d(root: Path) -> Path:
    """MVTec 3D-AD: rgb beside xyz (not read), gt masks with the image's name."""
    for i in range(6):
        _image(root / "train" / "good" / "rgb" / f"{i:03d}.png", i)
        (root / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        _image(root / "test" / "good" / "rgb" / f"{i:03d}.png", 40 + i)
        _mask(root / "test" / "good" / "gt" / f"{i:03d}.png", np.zeros((SIZE, SIZE), bool))
    for i in range(3):
        _mask(
            root / "test" / "crack" / "gt" / f"{i:03d}.png",
            _image(root / "test" / "crack" / "rgb" / f"{i:03d}.png", 60 + i, True),
        )
    return root


WRITERS = {
    "btad": (write_btad, 6, 5, 3, 0),  # normal train, test, defective test, train anomalies
    "dagm": (write_dagm, 5, 8, 3, 3),
    "ksdd2": (write_ksdd2, 5, 7, 2, 2),
    "visa": (write_visa, 6, 5, 3, 0),
    "mvtec3d": (write_mvtec3d, 6, 5, 3, 0),
}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_published_layout_is_recognised_and_read(tmp_path: Path, layout: str):
    write, n_train, n_test, n_defects, n_train_anomalies = WRITERS[layout]
    root = write(tmp_path / layout)
    assert detect_layout(root) == layout
    category = scan_dataset(root)
    assert category.layout == layout and category.root == root
    assert len(category.train) == n_train and all(s.label == 0 for s in category.train)
    assert len(category.test) == n_test and sum(s.label for s in category.test) == n_defects
    assert len(category.train_anomalies) == n_train_anomalies
    for sample in [*category.test, *category.train_anomalies]:
        assert sample.path.is_file() and (sample.mask_path is not None) == (sample.label == 1)
        if sample.label:
            assert np.asarray(Image.open(sample.mask_path)).any()  # its own mask, not an empty one
    seen, test = seen_anomalies(category, 2, seed=0)
    assert len(seen) == 2 and all(s.label == 1 for s in seen)
    if n_train_anomalies:  # drawn from the training split's defects; the test split stays whole
        assert set(seen) <= set(category.train_anomalies) and test == category.test
    else:
        assert not set(seen) & set(test) and len(test) == n_test - 2


def test_the_folder_layout_matches_masks_with_or_without_a_suffix_and_keeps_a_fixed_fifth(tmp_path: Path):
    root = write_folder(tmp_path / "mine")
    category = scan_dataset(root, normal_dir="good", abnormal_dir="bad", mask_dir="masks")
    assert category.layout == "folder" and len(category.train) == 8
    normals = [s for s in category.test if s.label == 0]
    assert len(normals) == 2  # round(0.2 * 10), the same two for every seed
    assert [s.path.name for s in normals] == [s.path.name for s in scan_dataset(root, "folder", normal_dir="good").test]
    assert {s.mask_path.name for s in category.test if s.label} == {"b0.png", "b1_mask.png", "b2.png", "b3_mask.png"}
    unmasked = scan_dataset(root, normal_dir="good", abnormal_dir="bad")  # image labels only
    assert all(s.mask_path is None for s in unmasked.test)
    (root / "masks" / "b3_mask.png").unlink()
    with pytest.raises(prnad.DataError, match="b3.jpg: no mask found"):
        scan_dataset(root, normal_dir="good", abnormal_dir="bad", mask_dir="masks")
    with pytest.raises(prnad.DataError, match="needs normal_dir"):
        scan_dataset(root, "folder")
    with pytest.raises(prnad.DataError, match="no known dataset layout"):
        scan_dataset(root)


def test_train_and_evaluate_on_dagm_and_on_your_own_folders(tmp_path: Path, capsys):
    dagm = write_dagm(tmp_path / "Class1")
    fast = [a for a in FAST_TRAIN]
    assert main(["train", "--data", str(dagm), "--out", str(tmp_path / "r1"), *fast, "--seen-anomalies", "2"]) == 0
    assert f"data: {dagm} read as dagm: 5 normal training images, 2 seen anomalies from the training split's" in (
        capsys.readouterr().err
    )
    detector = prnad.load(tmp_path / "r1", device="cpu")
    assert detector.info["layout"] == "dagm" and all(p.startswith("Train/") for p in detector.info["seen_anomalies"])
    assert detector.evaluate()["test_images"] == 8  # the whole test split
    mine = write_folder(tmp_path / "mine")
    argv = [
        "train",
        "--data",
        str(mine),
        "--out",
        str(tmp_path / "r2"),
        *fast,
        "--seen-anomalies",
        "1",
        "--no-progress",
    ]
    assert main([*argv, "--normal-dir", "good", "--abnormal-dir", "bad", "--mask-dir", "masks"]) == 0
    result = prnad.load(tmp_path / "r2", device="cpu").evaluate()
    assert result["test_images"] == 2 + 3 and result["metrics"]["pixel_ap"] is not None
    argv = [
        "train",
        "--data",
        str(mine),
        "--out",
        str(tmp_path / "r3"),
        *fast,
        "--seen-anomalies",
        "1",
        "--no-progress",
    ]
    assert main([*argv, "--normal-dir", "good", "--abnormal-dir", "bad"]) == 2
    assert "a seen anomaly needs its mask to train on" in capsys.readouterr().err
