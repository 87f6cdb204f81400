"""What a new user met by trying prnad: a batch size of 0, a relative data path, 16-bit images, a folder
given as an image, a training log written to a file. Each case ends in a clear error or works."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prnad
from prnad.cli import main
from prnad.data import to_rgb
from prnad.training.progress import ProgressLines, progress
from tests.conftest import FAST_TRAIN

TRAIN = [*FAST_TRAIN, "--seen-anomalies", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run(tiny_category: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("new_user") / "run"
    assert main(["train", "--data", str(tiny_category), "--out", str(out), *TRAIN]) == 0
    return out


@pytest.mark.parametrize("size", ["0", "-3"])
def test_predict_with_a_batch_size_below_one_is_refused_and_writes_nothing(
    run: Path, tiny_category: Path, tmp_path: Path, capsys, size: str
):
    out = tmp_path / "out"
    assert main(["predict", str(run), str(tiny_category / "test"), "--out", str(out), "--batch-size", size]) == 2
    err = capsys.readouterr().err
    assert f"batch_size must be an integer >= 1, got {size}" in err and "Traceback" not in err
    assert not out.exists()
    detector = prnad.load(run, device="cpu")
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    for call in (
        lambda: detector.predict([image], batch_size=int(size)),
        lambda: detector.predict_iter(iter([image]), batch_size=int(size)),  # refused at the call, not when read
        lambda: prnad.predict_folder(detector, [tiny_category / "test"], out, batch_size=int(size)),
    ):
        with pytest.raises(prnad.ConfigError, match="batch_size must be an integer >= 1"):
            call()
    assert not out.exists()


def test_a_run_trained_on_a_relative_path_evaluates_from_anywhere(
    tiny_category: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tiny_category.parent)
    out = tmp_path / "run"
    assert main(["train", "--data", tiny_category.name, "--out", str(out), *TRAIN]) == 0
    assert prnad.load(out).config.data.root == str(tiny_category.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(out)]) == 0
    # the data moved away: the error names the folder looked for, where it came from and what to do
    moved = Path(shutil.copytree(tiny_category, tmp_path / "moved"))
    detector = prnad.load(out, device="cpu")
    detector.config = prnad.make_config(detector.config, data=tmp_path / "gone")
    with pytest.raises(prnad.DataError, match=r"gone: the category folder this run trained on \(its data.root\)"):
        detector.evaluate()
    assert detector.evaluate(moved)["test_images"] > 0


def test_the_error_names_the_data_root_when_it_is_gone(tiny_category: Path, tmp_path: Path, capsys):
    data = Path(shutil.copytree(tiny_category, tmp_path / "tiny"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), *TRAIN]) == 0
    shutil.rmtree(data)
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: the category folder this run trained on" in err and "--data" in err
    assert len(err.strip().splitlines()) == 1


def _sixteen_bit_png(path: Path) -> np.ndarray:
    values = np.random.default_rng(0).integers(0, 65536, (48, 40), dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return values


def test_a_sixteen_bit_png_is_read_alike_from_its_path_a_pil_image_and_an_array(run: Path, tmp_path: Path):
    path = tmp_path / "grey16.png"
    values = _sixteen_bit_png(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)  # top byte, grey to RGB
    from_path, size = to_rgb(path, 40, "x")
    assert size == (40, 48)
    for other in (Image.open(path), values):
        assert np.array_equal(to_rgb(other, 40, "x")[0], from_path)
    assert np.array_equal(to_rgb(path, 64, "x")[0], to_rgb(Image.fromarray(expected), 64, "x")[0])
    detector = prnad.load(run, device="cpu")
    scores = [detector.predict(x).score for x in (path, Image.open(path), values)]
    assert scores[0] == scores[1] == scores[2]


def test_a_folder_given_as_an_image_says_it_is_a_folder_of_images(run: Path, tiny_category: Path, tmp_path: Path):
    detector = prnad.load(run, device="cpu")
    folder = tiny_category / "test" / "good"
    with pytest.raises(prnad.DataError, match=r"good: a folder \(of 3 images\), not an image file"):
        detector.predict(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(prnad.DataError, match="empty: a folder with no images in it"):
        detector.predict(empty)


def test_progress_off_a_terminal_writes_a_line_every_tenth(tmp_path: Path):
    stream = io.StringIO()  # not a terminal
    bar = progress(60, desc="train", stream=stream)
    assert isinstance(bar, ProgressLines)
    with bar:
        for step in range(60):
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{6 * k}/60" for k in range(1, 11)]
    assert lines[-1].startswith("train 60/60 (100%) loss 0.0167 elapsed ") and "\r" not in stream.getvalue()
    resumed = io.StringIO()
    with progress(7, initial=3, desc="train", stream=resumed) as bar:
        for _ in range(4):
            bar.update(1)
    assert [line.split()[1] for line in resumed.getvalue().splitlines()] == ["4/7", "5/7", "6/7", "7/7"]
    silent = io.StringIO()
    with progress(60, desc="train", stream=silent, enabled=False) as bar:
        bar.update(60)
    assert silent.getvalue() == ""


def test_a_training_log_written_to_a_file_holds_no_redrawn_bar(tiny_category: Path, tmp_path: Path):
    """The CLI with its output in a file, as a user running it under nohup or in CI."""
    import subprocess
    import sys

    log = tmp_path / "train.log"
    flags = [a for a in TRAIN if a != "--no-progress"]
    flags[flags.index("--iterations") + 1] = "20"
    command = [sys.executable, "-m", "prnad.cli", "train", "--data", str(tiny_category), "--out", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log.open("w") as handle:
        subprocess.run([*command, *flags], stdout=handle, stderr=subprocess.STDOUT, check=True, env=env)
    text = log.read_text()
    assert "\r" not in text
    steps = [line.split()[1] for line in text.splitlines() if line.startswith("train ")]
    assert steps == [f"{2 * k}/20" for k in range(1, 11)]
