"""Tests of prnad.data: reading images and masks, scanning MVTec AD folders, the seen-anomaly split."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prnad.data import (
    Category,
    list_images,
    load_samples,
    read_mask,
    read_rgb,
    scan_category,
    split_seen_anomalies,
    write_tiny_category,
)
from prnad.errors import DataError

BOTTLE = Path(__file__).resolve().parents[2] / "shared/data/mvtec_ad/bottle"


def _tiny(tmp_path: Path, **kwargs) -> Path:
    return write_tiny_category(tmp_path / "tiny", rng=np.random.default_rng(0), size=32, **kwargs)


def _matches_path(path: Path) -> str:
    return re.escape(str(path))


# ------------------------------------------------------------------------------------------- tiny category


def test_scan_tiny_category(tmp_path):
    root = _tiny(tmp_path)
    cat = scan_category(root)
    assert isinstance(cat, Category)
    assert cat.name == "tiny"
    assert len(cat.train) == 8 and all(s.label == 0 and s.mask_path is None for s in cat.train)
    assert len(cat.test) == 9
    assert cat.defect_types == ("hole", "scratch")
    assert [s.path for s in cat.test] == sorted((s.path for s in cat.test), key=str)
    good = [s for s in cat.test if s.label == 0]
    assert len(good) == 3 and all(s.defect_type == "good" and s.mask_path is None for s in good)
    for s in cat.test:
        if s.label == 1:
            assert s.mask_path == root / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
            assert s.mask_path.is_file()


def test_load_tiny_category(tmp_path):
    cat = scan_category(_tiny(tmp_path))
    images, masks = load_samples(cat.test, 16)
    assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8
    assert masks.shape == (9, 16, 16) and masks.dtype == bool
    labels = np.array([s.label for s in cat.test])
    assert not masks[labels == 0].any()
    assert all(m.any() for m in masks[labels == 1])


def test_load_no_samples_gives_empty_arrays():
    images, masks = load_samples([], 8)
    assert images.shape == (0, 8, 8, 3) and masks.shape == (0, 8, 8)


def test_write_tiny_category_is_deterministic(tmp_path):
    a = write_tiny_category(tmp_path / "a", rng=np.random.default_rng(3), size=16, defect_types={"dent": 2})
    b = write_tiny_category(tmp_path / "b", rng=np.random.default_rng(3), size=16, defect_types={"dent": 2})
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    mask = np.asarray(Image.open(a / "ground_truth/dent/000_mask.png"))
    assert set(np.unique(mask)) == {0, 255}


def test_require_masks_false_allows_missing_mask(tmp_path):
    root = _tiny(tmp_path)
    (root / "ground_truth/hole/001_mask.png").unlink()
    cat = scan_category(root, require_masks=False)
    sample = next(s for s in cat.test if s.path == root / "test/hole/001.png")
    assert sample.label == 1 and sample.mask_path is None
    _, masks = load_samples([sample], 8)
    assert not masks.any()


def test_mask_with_same_stem_or_other_suffix_is_found(tmp_path):
    root = _tiny(tmp_path)
    gt = root / "ground_truth/hole"
    (gt / "000_mask.png").rename(gt / "000.png")
    (gt / "001_mask.png").rename(gt / "001_mask.PNG")
    cat = scan_category(root)
    found = {s.path.name: s.mask_path for s in cat.test if s.defect_type == "hole"}
    assert found["000.png"] == gt / "000.png"
    assert found["001.png"] == gt / "001_mask.PNG"


# ------------------------------------------------------------------------------------------- real bottle


@pytest.mark.skipif(not BOTTLE.is_dir(), reason="MVTec AD bottle not available")
def test_bottle_scan_and_split():
    cat = scan_category(BOTTLE)
    assert (len(cat.train), len(cat.test)) == (209, 83)
    defects = [s for s in cat.test if s.label == 1]
    assert len(defects) == 63
    seen, rest = split_seen_anomalies(cat.test, 10, 0)
    assert (len(seen), len(rest)) == (10, 73)

    expected_paths = sorted(str(s.path) for s in defects)
    order = np.random.RandomState(0).permutation(len(expected_paths))
    assert [str(s.path) for s in seen] == [expected_paths[i] for i in order[:10]]

    seen_paths = {s.path for s in seen}
    assert not seen_paths & {s.path for s in rest}
    assert list(rest) == [s for s in cat.test if s.path not in seen_paths]
    assert split_seen_anomalies(cat.test, 10, 0) == (seen, rest)
    assert {s.path for s in split_seen_anomalies(cat.test, 10, 1)[0]} != seen_paths


# ------------------------------------------------------------------------------------------------ errors


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=_matches_path(tmp_path / "nope")):
        scan_category(tmp_path / "nope")


def test_wrong_layout_shows_expected_tree(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "000.png")
    with pytest.raises(DataError) as info:
        scan_category(root)
    message = str(info.value)
    assert str(root) in message and "train/good" in message and "ground_truth/<defect>" in message


def test_empty_train_good(tmp_path):
    root = _tiny(tmp_path)
    for p in (root / "train/good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=_matches_path(root / "train/good") + ": no images"):
        scan_category(root)


def test_defect_without_mask(tmp_path):
    root = _tiny(tmp_path)
    (root / "ground_truth/scratch/002_mask.png").unlink()
    expected = root / "ground_truth/scratch/002_mask.png"
    with pytest.raises(DataError, match=_matches_path(root / "test/scratch/002.png") + ".*" + _matches_path(expected)):
        scan_category(root)


def test_random_bytes_image(tmp_path):
    root = _tiny(tmp_path)
    bad = root / "test/good/001.png"
    bad.write_bytes(np.random.default_rng(1).bytes(500))
    cat = scan_category(root)
    with pytest.raises(DataError, match="^" + _matches_path(bad) + ": cannot read image"):
        load_samples(cat.test, 8)


def test_truncated_png(tmp_path):
    root = _tiny(tmp_path)
    bad = root / "test/hole/000.png"
    noisy = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    cat = scan_category(root)
    with pytest.raises(DataError, match="^" + _matches_path(bad)):
        load_samples(cat.test, 8)


def test_mask_of_wrong_size(tmp_path):
    root = _tiny(tmp_path)
    mask = root / "ground_truth/hole/002_mask.png"
    Image.new("L", (20, 32), 255).save(mask)
    cat = scan_category(root)
    with pytest.raises(DataError, match=_matches_path(mask) + ": mask is 20x32 but its image is 32x32"):
        load_samples(cat.test, 8)


def test_split_n_too_large(tmp_path):
    cat = scan_category(_tiny(tmp_path))
    with pytest.raises(DataError, match="only 6 defect images"):
        split_seen_anomalies(cat.test, 7, 0)


def test_split_n_zero_keeps_test(tmp_path):
    cat = scan_category(_tiny(tmp_path))
    assert split_seen_anomalies(cat.test, 0, 0) == ((), cat.test)


# ------------------------------------------------------------------------------------------ images module


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_read_rgb_converts_to_three_channels(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png"
    Image.new(mode, (10, 6), 120).save(path)
    image, original_wh = read_rgb(path, 4)
    assert image.shape == (4, 4, 3) and image.dtype == np.uint8
    assert original_wh == (10, 6)


def test_read_mask_binarises_above_zero_with_nearest(tmp_path):
    values = np.zeros((8, 8), dtype=np.uint8)
    values[:4, :4] = 1  # a value of 1 is a defect
    values[4:, 4:] = 255
    path = tmp_path / "m.png"
    Image.fromarray(values).save(path)
    mask = read_mask(path, 4, (8, 8))
    assert mask.dtype == bool
    expected = np.zeros((4, 4), dtype=bool)
    expected[:2, :2] = expected[2:, 2:] = True
    np.testing.assert_array_equal(mask, expected)
    up = read_mask(path, 16, (8, 8))
    np.testing.assert_array_equal(up, np.kron(values > 0, np.ones((2, 2), dtype=bool)))


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff"]
