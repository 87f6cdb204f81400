"""The fault suite: every bad input ends in one clear line naming the file at fault, exit status 2 from the CLI
(1 from predict when only some inputs failed), and nothing already there is lost.

Each test is one case; docs/cli.md says how many there are (tests/test_readme.py checks the number).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from prnad.checkpoint import load_checkpoint, save_checkpoint
from prnad.cli import main
from prnad.config import build_config
from prnad.training import trainer
from tests.conftest import FAST_TRAIN, tiny_overrides

TRAIN = [*FAST_TRAIN, "--seen-anomalies", "2", "--no-progress"]


@pytest.fixture()
def data(tiny_category: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny category, free to damage."""
    return Path(shutil.copytree(tiny_category, tmp_path / "tiny"))


@pytest.fixture(scope="module")
def trained(tiny_category: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(["train", "--data", str(tiny_category), "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture()
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of a trained run."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _fails(argv: list[str], capsys, *, names: str, status: int = 2) -> str:
    """Run the CLI; check the exit status and that stderr is one message naming ``names``, no traceback."""
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    assert names in err, err
    assert "Traceback" not in err
    return err


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *TRAIN, *extra]


def _no_run_written(out: Path) -> None:
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint.safetensors").exists()


# ------------------------------------------------------------------------------------------ images and masks


def test_corrupt_image_in_train_good(data: Path, tmp_path: Path, capsys):
    (data / "train" / "good" / "003.png").write_bytes(b"\x89PNG not really")
    _fails(_train(data, tmp_path / "out"), capsys, names="003.png")
    _no_run_written(tmp_path / "out")


def test_truncated_image_in_train_good(data: Path, tmp_path: Path, capsys):
    path = data / "train" / "good" / "004.png"
    path.write_bytes(path.read_bytes()[:200])
    _fails(_train(data, tmp_path / "out"), capsys, names="004.png")


def test_corrupt_image_in_a_defect_folder_at_evaluation(run: Path, data: Path, capsys):
    """A held-out defect image broken after training: evaluate names it and leaves metrics.json as it was."""
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    before = (run / "metrics.json").read_bytes()
    seen = json.loads(before)["train_info"]["seen_anomalies"]
    victim = next(p for p in sorted((data / "test" / "hole").iterdir()) if f"test/hole/{p.name}" not in seen)
    victim.write_bytes(victim.read_bytes()[:100])
    _fails(["evaluate", run, "--data", data], capsys, names=victim.name)
    assert (run / "metrics.json").read_bytes() == before


def test_corrupt_and_truncated_images_among_predict_inputs(run: Path, data: Path, tmp_path: Path, capsys):
    folder = tmp_path / "inputs"
    shutil.copytree(data / "test" / "good", folder)
    (folder / "broken.png").write_bytes(b"garbage")
    (folder / "cut.png").write_bytes((folder / "000.png").read_bytes()[:150])
    out = tmp_path / "pred"
    err = _fails(["predict", run, folder, tmp_path / "missing.png", "--out", out], capsys, names="broken.png", status=1)
    assert "cut.png" in err and "missing.png" in err and "3 input(s) could not be scored" in err
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 + 3  # header, the 3 good images, a row for each of the 3 failures
    assert sorted(p.name for p in out.glob("*.npy")) == ["000.npy", "001.npy", "002.npy"]


def test_mask_missing(data: Path, tmp_path: Path, capsys):
    (data / "ground_truth" / "hole" / "001_mask.png").unlink()
    _fails(_train(data, tmp_path / "out"), capsys, names="001_mask.png")


def test_mask_of_another_size(data: Path, tmp_path: Path, capsys):
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "scratch" / "000_mask.png")
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "hole" / "000_mask.png")
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "hole" / "002_mask.png")
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "scratch" / "002_mask.png")
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "hole" / "001_mask.png")
    Image.new("L", (32, 40), 255).save(data / "ground_truth" / "scratch" / "001_mask.png")
    _fails(_train(data, tmp_path / "out"), capsys, names="_mask.png: mask is 32x40")


def test_all_zero_mask_on_a_defect_image(data: Path, tmp_path: Path, capsys):
    for folder in ("hole", "scratch"):
        for mask in (data / "ground_truth" / folder).iterdir():
            Image.new("L", (64, 64), 0).save(mask)
    _fails(_train(data, tmp_path / "out"), capsys, names="all zero")


def test_empty_train_folder(data: Path, tmp_path: Path, capsys):
    for p in (data / "train" / "good").iterdir():
        p.unlink()
    _fails(_train(data, tmp_path / "out"), capsys, names=str(data / "train" / "good"))


def test_empty_defect_folder(data: Path, tmp_path: Path, capsys):
    (data / "test" / "crack").mkdir()
    _fails(_train(data, tmp_path / "out"), capsys, names=str(data / "test" / "crack"))


def test_wrong_layout(tmp_path: Path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "flat" / "a.png")
    err = _fails(_train(tmp_path / "flat", tmp_path / "out"), capsys, names="flat")
    assert "train/good" in err


def test_decompression_bomb_image(data: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 image is then over twice the limit
    _fails(_train(data, tmp_path / "out"), capsys, names="000.png")


def test_decompression_bomb_texture(data: Path, tmp_path: Path, capsys, monkeypatch, textures: Path):
    big = textures / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # the 64x64 data pass; the 100x100 texture does not
    _fails(_train(data, tmp_path / "out", "--textures", str(textures)), capsys, names="big.png")


def test_empty_texture_folder(data: Path, tmp_path: Path, capsys):
    (tmp_path / "tex").mkdir()
    _fails(_train(data, tmp_path / "out", "--textures", str(tmp_path / "tex")), capsys, names="tex")


# ---------------------------------------------------------------------------------------------- checkpoints


def test_truncated_checkpoint(run: Path, capsys):
    model = run / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    _fails(["evaluate", run], capsys, names="model.safetensors")
    _fails(["predict", run, run, "--out", run / "p"], capsys, names="model.safetensors")


def test_corrupt_checkpoint(run: Path, capsys):
    (run / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    _fails(["evaluate", run], capsys, names="model.safetensors")


def _rewrite_header(path: Path, **changes: str | None) -> None:
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, value in changes.items():
        if value is None:
            header.pop(key)
        else:
            header[key] = value
    save_file(tensors, str(path), metadata=header)


def test_checkpoint_of_a_newer_format(run: Path, capsys):
    _rewrite_header(run / "model.safetensors", format_version="99")
    err = _fails(["evaluate", run], capsys, names="model.safetensors")
    assert "newer" in err


def test_checkpoint_without_a_config_header(run: Path, capsys):
    _rewrite_header(run / "model.safetensors", config=None)
    err = _fails(["evaluate", run], capsys, names="model.safetensors")
    assert "no config" in err


def test_checkpoint_with_a_stale_config(run: Path, capsys):
    config = json.loads(load_checkpoint_header(run / "model.safetensors")["config"])
    config["model"]["retired_option"] = 3
    _rewrite_header(run / "model.safetensors", config=json.dumps(config))
    err = _fails(["evaluate", run], capsys, names="model.safetensors")
    assert "retired_option" in err


def load_checkpoint_header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_killed_while_writing_a_checkpoint(tiny_category: Path, tmp_path: Path, monkeypatch):
    """The write of the second checkpoint dies half-way: the first still loads and --resume finishes the run."""
    config = build_config(tiny_overrides(tiny_category))  # 4 steps, a checkpoint every 2
    straight = trainer.train(config, tmp_path / "straight", progress=False)
    real_save, calls = save_file, {"n": 0}

    def dying_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"half a file")
            raise KeyboardInterrupt  # the process is killed mid-write
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr("prnad.checkpoint.save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path / "run", progress=False)
    monkeypatch.setattr("prnad.checkpoint.save_file", real_save)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").iteration == 2
    resumed = trainer.train(config, tmp_path / "run", resume=True, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_nan_model_output(run: Path, data: Path, tmp_path: Path, capsys):
    ckpt = load_checkpoint(run / "model.safetensors")
    with torch.no_grad():
        ckpt.model.decoder.head.weight.fill_(float("nan"))
    save_checkpoint(run / "model.safetensors", model=ckpt.model, config=ckpt.config, iteration=4, info=ckpt.info)
    err = _fails(["evaluate", run], capsys, names="NaN")
    assert "run" in err
    _fails(["predict", run, data / "test" / "good", "--out", tmp_path / "p"], capsys, names="NaN")


# --------------------------------------------------------------------------------------- folders and config


def test_unwritable_output_folder(data: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    _fails(_train(data, blocker / "run"), capsys, names=str(blocker / "run"))
    assert blocker.read_text() == "a file, not a folder"


def test_unwritable_predict_output(run: Path, data: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(["predict", run, data / "test" / "good", "--out", blocker / "p"], capsys, names=str(blocker / "p"))


def test_train_into_a_folder_that_holds_a_run(run: Path, data: Path, capsys):
    before = (run / "model.safetensors").read_bytes()
    log = (run / "train_log.jsonl").read_text()
    err = _fails(_train(data, run), capsys, names=str(run))
    assert "--resume" in err and "--overwrite" in err
    assert (run / "model.safetensors").read_bytes() == before and (run / "train_log.jsonl").read_text() == log
    assert main(_train(data, run, "--overwrite", "--seed", "3")) == 0
    assert (run / "model.safetensors").read_bytes() != before
    assert len((run / "train_log.jsonl").read_text().splitlines()) < len(log.splitlines()) + 1


def test_every_defect_image_seen(data: Path, tmp_path: Path, capsys):
    err = _fails(_train(data, tmp_path / "out", "--seen-anomalies", "6"), capsys, names=str(data / "test"))
    assert "no defect image is left" in err
    _no_run_written(tmp_path / "out")


def test_no_normal_test_images(data: Path, tmp_path: Path, capsys):
    shutil.rmtree(data / "test" / "good")
    _fails(_train(data, tmp_path / "out"), capsys, names=str(data / "test" / "good"))


def test_cuda_without_cuda(data: Path, tmp_path: Path, capsys, run: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails(_train(data, tmp_path / "out", "--device", "cuda"), capsys, names="cuda")
    _fails(["evaluate", run, "--device", "cuda:0"], capsys, names="cuda")


def test_no_anomaly_kind_left_is_refused_before_any_work(data: Path, tmp_path: Path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("synth:\n  hea_weight: 0.0\n  hoa_weight: 0.0\n")
    _fails(_train(data, tmp_path / "out", "--seen-anomalies", "0", "--config", str(config)), capsys, names="hea_weight")
    assert not (tmp_path / "out").exists()


def test_unknown_config_key(data: Path, tmp_path: Path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  iteratons: 5\n")
    _fails(_train(data, tmp_path / "out", "--config", str(config)), capsys, names="train.iteratons")


def test_resume_after_the_data_changed(data: Path, tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    real_step, calls = trainer.training_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_train(data, out, "--iterations", "4", "--config", str(_every(tmp_path, 1))))
    monkeypatch.setattr(trainer, "training_step", real_step)
    gone = Path(load_checkpoint(out / "checkpoint.safetensors").info["seen_anomalies"][0])
    (data / gone).unlink()  # a seen anomaly leaves the data folder: the split of the seed changes
    (data / "ground_truth" / gone.parent.name / f"{gone.stem}_mask.png").unlink()
    err = _fails(
        _train(data, out, "--iterations", "4", "--config", str(_every(tmp_path, 1)), "--resume"),
        capsys,
        names="checkpoint.safetensors",
    )
    assert "data changed" in err


def _every(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "every.yaml"
    path.write_text(f"train:\n  checkpoint_every: {n}\n")
    return path


def test_seen_anomaly_copied_into_the_test_set(run: Path, data: Path, tmp_path: Path, capsys):
    seen = load_checkpoint(run / "model.safetensors").info["seen_anomalies"][0]
    defect = Path(seen).parent.name
    copy = data / "test" / defect / "copy.png"
    shutil.copy(data / seen, copy)
    shutil.copy(
        data / "ground_truth" / defect / (Path(seen).stem + "_mask.png"),
        data / "ground_truth" / defect / "copy_mask.png",
    )
    err = _fails(["evaluate", run, "--data", data], capsys, names="copy.png")
    assert seen in err
