"""Layout anomalies (a part removed, moved, rotated) and the evaluation set made of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prnad
from prnad.cli import main
from prnad.synthesis.layout import KINDS, layout_anomaly
from tests.conftest import tiny_overrides


def _disc_image(size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A grey background with a bright disc whose left half is striped (so a part has content)."""
    yy, xx = np.mgrid[:size, :size]
    foreground = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    image = np.full((size, size, 3), 40, dtype=np.uint8)
    image[foreground] = 200
    image[foreground & (xx < size // 2) & (yy % 4 < 2)] = 120
    return image, foreground


@pytest.mark.parametrize("kind", KINDS)
def test_a_layout_anomaly_changes_the_image_only_inside_its_mask(kind: str):
    image, foreground = _disc_image()
    changed = 0
    for seed in range(20):
        made = layout_anomaly(image, foreground, kind, np.random.default_rng(seed))
        assert made is not None
        out, mask = made
        assert out.shape == image.shape and mask.shape == foreground.shape and mask.any()
        assert np.array_equal(out[~mask], image[~mask]) or kind == "rotated"
        changed += int((out != image).any())
        if kind == "removed":  # the part's pixels are now background pixels
            assert np.all(out[mask] == 40) and np.array_equal(mask, mask & foreground)
        if kind == "moved":
            assert (mask & ~foreground).any()  # it landed on the background
    assert changed >= 18  # a rotation of a symmetric part may change nothing


def test_rotated_changes_nothing_outside_its_box():
    image, foreground = _disc_image()
    out, mask = layout_anomaly(image, foreground, "rotated", np.random.default_rng(3))
    ys, xs = np.nonzero(out != image)[:2]
    side = round(0.2 * 40)
    assert ys.max() - ys.min() < side and xs.max() - xs.min() < side
    assert mask[ys, xs].all()  # every changed pixel is inside the mask


def test_no_part_without_foreground_and_unknown_kinds_refused():
    image, _ = _disc_image()
    assert layout_anomaly(image, np.zeros((40, 40), bool), "moved", np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="removed, moved, rotated"):
        layout_anomaly(image, np.ones((40, 40), bool), "mirrored", np.random.default_rng(0))


def test_the_layout_set_is_a_category_that_evaluate_measures(tiny_category: Path, tmp_path: Path, capsys):
    out = tmp_path / "layout"
    assert main(["layout-set", "--data", str(tiny_category), "--out", str(out), "--per-kind", "2"]) == 0
    assert "prnad evaluate RUN --data" in capsys.readouterr().out
    record = json.loads((out / "layout_set.json").read_text())
    assert record["made"] == {kind: 2 for kind in KINDS} and record["seed"] == 0
    for kind in KINDS:
        for i in range(2):
            image = Image.open(out / "test" / kind / f"{i:03d}.png")
            mask = np.asarray(Image.open(out / "ground_truth" / kind / f"{i:03d}_mask.png"))
            assert image.size == mask.shape[::-1] and set(np.unique(mask)) == {0, 255}
    assert sorted(p.name for p in (out / "test" / "good").iterdir()) == sorted(
        p.name for p in (tiny_category / "test" / "good").iterdir()
    )
    again = prnad.layout_set(tiny_category, tmp_path / "again", per_kind=2)  # seeded: the same images
    for kind in KINDS:
        a = np.asarray(Image.open(out / "test" / kind / "001.png"))
        assert np.array_equal(a, np.asarray(Image.open(again / "test" / kind / "001.png")))
    with pytest.raises(prnad.DataError, match="already exists"):
        prnad.layout_set(tiny_category, out)
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=tiny_overrides(tiny_category))
    result = detector.evaluate(out)
    assert result["test_images"] == 3 + 6 and sorted(result["per_type"]) == sorted(KINDS)
