"""The command line, in-process through main([...]): every command, its outputs, and its errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from prnad.cli import main
from tests.conftest import FAST_TRAIN as FAST


@pytest.fixture()
def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": {"kmeans_restarts": 1, "decoder_channels": [16, 16, 8]}, "data": {"seen_anomalies": 2}}
        )
    )
    return path


@pytest.fixture()
def trained_run(tiny_category: Path, tmp_path: Path, fast_config: Path) -> Path:
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(tiny_category),
        "--out",
        str(out),
        "--seed",
        "0",
        "--config",
        str(fast_config),
        "--no-progress",
        *FAST,
    ]
    assert main(argv) == 0
    return out


def test_train_writes_a_run_folder(trained_run: Path):
    assert (trained_run / "model.safetensors").is_file()
    assert (trained_run / "checkpoint.safetensors").is_file()
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["data"]["image_size"] == 64 and config["train"]["iterations"] == 2
    assert config["model"]["kmeans_restarts"] == 1  # from --config, with flags on top


def test_train_with_a_preset_under_the_config_and_flags(tiny_category: Path, tmp_path: Path, fast_config: Path, capsys):
    """--preset line gives the line head; --config and flags still override it (here the decoder widths)."""
    out = tmp_path / "line"
    argv = ["train", "--data", str(tiny_category), "--out", str(out), "--preset", "line", "--config", str(fast_config)]
    assert main([*argv, "--no-progress", *FAST]) == 0
    printed = capsys.readouterr().out  # what the image threshold promises, then where the run is
    assert "new normal images flagged 33.3 % of the time on average" in printed and "(2 held-out normals)" in printed
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert model["prototype_match"] == "map" and model["score_bank_size"] == 0 and model["msa_grids"] == [1]
    assert model["decoder_channels"] == [16, 16, 8]  # the config file's, over the preset's [32, 16, 8]


def test_an_unknown_preset_is_refused_naming_the_presets(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "fastest"])
    assert exit_info.value.code == 2 and "balanced" in capsys.readouterr().err


def test_evaluate_prints_metrics_and_saves_maps(trained_run: Path, tiny_category: Path, capsys):
    maps = trained_run / "maps"
    assert main(["evaluate", str(trained_run), "--save-maps", str(maps)]) == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed and "pixel AP" in printed and "ms / image" in printed
    result = json.loads((trained_run / "metrics.json").read_text())
    assert set(result["metrics"]) == {"image_auroc", "pixel_auroc", "pro", "pixel_ap"}
    assert result["test_images"] == 3 + 6 - 2  # good + defects - seen anomalies
    assert result["seed"] == 0 and result["encoder"]["weights"] == "random" and "device" in result
    assert result["config"]["train"]["iterations"] == 2
    rows = list(csv.DictReader((maps / "scores.csv").open()))
    assert len(rows) == result["test_images"] and set(rows[0]) == {"path", "label", "score"}
    for row in rows:
        array = np.load(maps / Path(row["path"]).with_suffix(".npy"))
        assert array.shape == (64, 64) and array.dtype == np.float32
        assert (tiny_category / "test" / row["path"]).is_file()
    assert sorted({r["label"] for r in rows}) == ["0", "1"]


def test_synth_writes_a_grid_per_kind(tiny_category: Path, tmp_path: Path):
    out = tmp_path / "synth.png"
    assert (
        main(["synth", "--data", str(tiny_category), "--out", str(out), "--image-size", "64", "--seen-anomalies", "2"])
        == 0
    )
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] > 3 * 64  # three rows: EA, HEA, HOA
    assert picture.shape[1] > 3 * 64  # label, normal, anomaly, mask


def test_synth_with_a_texture_folder(tiny_category: Path, tmp_path: Path, textures: Path):
    out = tmp_path / "s.png"
    argv = ["synth", "--data", str(tiny_category), "--textures", str(textures), "--out", str(out), "--image-size", "64"]
    assert main([*argv, "--seen-anomalies", "0"]) == 0
    assert out.is_file()


def test_demo_runs_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "2", "--image-size", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed
    assert (out / "data" / "washer" / "ground_truth").is_dir()
    assert json.loads((out / "run" / "metrics.json").read_text())["test_images"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "{tmp}/nowhere", "--out", "{tmp}/r"], "nowhere"),
        (["evaluate", "{tmp}"], "no trained model"),
        (["synth", "--data", "{tmp}", "--out", "{tmp}/x.png"], "expected the MVTec AD layout"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--iterations", "0"], "train.iterations"),
        (["train", "--data", "{tmp}", "--out", "{tmp}/r", "--backbone-weights", "{tmp}/w.pth"], "w.pth"),
    ],
)
def test_user_errors_exit_2_with_a_message(tmp_path: Path, capsys, argv, message, tiny_category):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--backbone-weights" in argv:
        argv[argv.index("--data") + 1] = str(tiny_category)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_truncated_model_in_run_folder(trained_run: Path, capsys):
    model = trained_run / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    assert main(["evaluate", str(trained_run)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_predict_scores_new_images(trained_run: Path, tiny_category: Path, tmp_path: Path, capsys):
    out = tmp_path / "pred"
    folder = tiny_category / "test" / "hole"
    single = tiny_category / "test" / "good" / "000.png"
    assert main(["predict", str(trained_run), str(folder), str(single), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 + 1 and all(r["error"] == "" for r in rows)
    assert all(np.isfinite(float(r["score"])) for r in rows)  # a sum of z-scores with the default score banks
    assert all(r["is_anomalous"] in ("true", "false") for r in rows)
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(d["path"], d["score"]) for d in lines] == [(r["path"], float(r["score"])) for r in rows]
    names = sorted(p.name for p in out.glob("*.npy"))
    assert len(names) == 4  # two files are named 000: prefixed with their index, so nothing is overwritten
    assert np.load(out / names[0]).shape == (64, 64)
    assert len(list(out.glob("*_overlay.png"))) == 4 and len(list(out.glob("*_mask.png"))) == 4
    assert main(["predict", str(trained_run), str(tmp_path / "nothing.png"), "--out", str(out)]) == 1
    assert "nothing.png" in capsys.readouterr().err  # reported; the exit status says an input failed


def test_evaluate_on_a_copy_of_the_data_holds_out_the_seen_anomalies(trained_run: Path, tiny_category: Path, tmp_path):
    """Before the fix, --data turned the seen-anomaly check off and evaluated them; now they are removed by path."""
    import shutil

    assert main(["evaluate", str(trained_run)]) == 0
    own = json.loads((trained_run / "metrics.json").read_text())
    copy = Path(shutil.copytree(tiny_category, tmp_path / "copy"))
    assert main(["evaluate", str(trained_run), "--data", str(copy)]) == 0
    other = json.loads((trained_run / "metrics.json").read_text())
    assert other["test_images"] == own["test_images"] == 3 + 6 - 2
    assert other["metrics"] == own["metrics"]


def test_demo_passes_its_learning_rate(tmp_path: Path):
    from prnad.config import TrainConfig
    from prnad.demo import DEMO_DEFAULTS, demo_config

    config = demo_config(tmp_path, seed=0, iterations=None, image_size=None, device="auto", overrides=None)
    assert config.train.lr == DEMO_DEFAULTS["lr"] != TrainConfig().lr
    flagged = demo_config(
        tmp_path, seed=0, iterations=5, image_size=64, device="cpu", overrides={"train": {"lr": 0.01}}
    )
    assert flagged.train.lr == 0.01 and flagged.train.iterations == 5 and flagged.data.image_size == 64


def test_predict_on_a_test_folder_decides_every_image_of_every_type(trained_run: Path, tiny_category: Path, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_category / "test", data)
    (data / "hole" / "zz_corrupt.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), str(data), "--out", str(out)]) == 1  # one input failed
    rows = list(csv.DictReader((out / "results.csv").open()))
    images = sorted(p for p in data.rglob("*.png"))
    assert len(rows) == len(images) == 3 + 6 + 1
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and "zz_corrupt.png" in failed[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert all(r["is_anomalous"] in ("true", "false") for r in good)
    names = {p.name for p in out.iterdir()}
    for image in images:
        if image.name != "zz_corrupt.png":
            stem = f"{image.parent.name}_{image.stem}"  # the path below the folder named
            assert {f"{stem}.npy", f"{stem}_mask.png", f"{stem}_overlay.png"} <= names


def test_predict_threshold_flags(trained_run: Path, tiny_category: Path, tmp_path: Path, capsys):
    folder = str(tiny_category / "test")
    assert main(["predict", str(trained_run), folder, "--out", str(tmp_path / "a"), "--threshold", "1e9"]) == 0
    rows = list(csv.DictReader((tmp_path / "a" / "results.csv").open()))
    assert {r["is_anomalous"] for r in rows} == {"false"}  # no score exceeds 1e9
    argv = ["predict", str(trained_run), folder, "--out", str(tmp_path / "b"), "--pixel-threshold", "-1"]
    assert main(argv) == 0
    masks = [np.asarray(Image.open(p)) for p in (tmp_path / "b").glob("*_mask.png")]
    assert masks and all(m.min() == 255 for m in masks)  # every pixel above -1
    argv = ["predict", str(trained_run), folder, "--out", str(tmp_path / "c"), "--max-false-alarm-rate", "0.5"]
    assert main(argv) == 0
    capsys.readouterr()
    for rate in ("0", "1.5"):  # a rate of 0 cannot be promised from finitely many normals
        argv = ["predict", str(trained_run), folder, "--out", str(tmp_path / "d"), "--max-false-alarm-rate", rate]
        assert main(argv) == 2
        assert "false-alarm rate must be in (0, 1)" in capsys.readouterr().err
