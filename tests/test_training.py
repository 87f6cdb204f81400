"""Training: the batch mix, reproducibility, resume after an interruption, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prnad.checkpoint import load_checkpoint, save_checkpoint
from prnad.config import SynthConfig, build_config
from prnad.errors import CheckpointError, ConfigError, TrainingError
from prnad.training import trainer
from prnad.training.sampler import KINDS, AnomalyStream, TrainingPool, batch_kinds, batch_offset, kind_fractions
from tests.conftest import tiny_overrides


def test_default_batch_mix_is_half_normal_quarter_seen_quarter_simulated():
    fractions = kind_fractions(SynthConfig(), n_seen=10)
    for offset in (0.0, 0.3, 0.999):
        kinds = batch_kinds(fractions, 16, offset)
        assert [kinds.count(k) for k in KINDS] == [8, 2, 2, 2, 2]


@pytest.mark.parametrize("batch_size", range(1, 17))
def test_every_kind_gets_its_share_at_any_batch_size(batch_size):
    """Before the fix, batch 4 had no EA and no HOA at all; now each kind is floor/ceil of B * share per batch
    and its share over the stream converges to the configured one."""
    fractions = kind_fractions(SynthConfig(), n_seen=10)
    batches = 4000 // batch_size
    counts = dict.fromkeys(KINDS, 0)
    for b in range(batches):
        kinds = batch_kinds(fractions, batch_size, batch_offset(0, b))
        for kind in KINDS:
            n = kinds.count(kind)
            assert np.floor(batch_size * fractions[kind]) <= n <= np.ceil(batch_size * fractions[kind])
            counts[kind] += n
    for kind in KINDS:
        assert counts[kind] > 0
        assert abs(counts[kind] / (batches * batch_size) - fractions[kind]) < 0.02, (kind, counts)


def test_stream_kinds_follow_the_batch_offsets():
    pool = _pool()
    stream = AnomalyStream(pool, SynthConfig(), seed=5, batch_size=4, start=0, stop=4 * 50)
    seen = {stream.kind_at(b, p) for b in range(50) for p in range(4)}
    assert seen == set(KINDS)
    assert stream.kind_at(7, 2) == batch_kinds(stream.fractions, 4, batch_offset(5, 7))[2]


def test_without_seen_anomalies_the_anomalous_half_is_simulated():
    fractions = kind_fractions(SynthConfig(), n_seen=0)
    assert fractions["seen"] == fractions["ea"] == 0.0
    assert fractions["hea"] == fractions["hoa"] == 0.25
    with pytest.raises(ConfigError, match="hea_weight"):
        kind_fractions(SynthConfig(hea_weight=0.0, hoa_weight=0.0), n_seen=0)


def _pool(n: int = 4, size: int = 64) -> TrainingPool:
    rng = np.random.default_rng(0)
    normals = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((2, size, size), dtype=bool)
    masks[:, 20:40, 20:40] = True
    return TrainingPool(normals, np.ones((n, size, size), bool), normals[:2].copy(), masks, normals[:2].copy())


def test_stream_items_are_a_function_of_seed_and_index():
    pool = _pool()
    a = AnomalyStream(pool, SynthConfig(), seed=3, batch_size=8, start=0, stop=16)
    b = AnomalyStream(pool, SynthConfig(), seed=3, batch_size=8, start=8, stop=16)
    for i in range(8):
        assert torch.equal(a[8 + i][0], b[i][0]) and torch.equal(a[8 + i][1], b[i][1])
    image, mask, _ = a[5]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert image.min() >= 0.0 and image.max() <= 1.0
    for i in range(8):
        assert (a[i][1].sum() > 0) == (a.kind_at(0, i) != "normal")
    c = AnomalyStream(pool, SynthConfig(), seed=4, batch_size=8, start=0, stop=16)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(8))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_the_same_model(tiny_category, tmp_path):
    config = build_config(tiny_overrides(tiny_category))
    first = trainer.train(config, tmp_path / "a", progress=False)
    second = trainer.train(config, tmp_path / "b", progress=False)
    _assert_same_tensors(_state(first), _state(second))
    other = trainer.train(build_config(tiny_overrides(tiny_category, seed=1)), tmp_path / "c", progress=False)
    assert not torch.equal(_state(first)["model.decoder.head.weight"], _state(other)["model.decoder.head.weight"])


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny_category, tmp_path, monkeypatch):
    config = build_config(tiny_overrides(tiny_category))
    straight = trainer.train(config, tmp_path / "straight", progress=False)

    real_step, calls = trainer.training_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors").iteration == 2
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.setattr(trainer, "training_step", real_step)
    resumed = trainer.train(config, tmp_path / "resumed", resume=True, progress=False)
    _assert_same_tensors(_state(straight), _state(resumed))


def test_resume_refuses_another_config_and_a_missing_checkpoint(tiny_category, tmp_path):
    config = build_config(tiny_overrides(tiny_category))
    with pytest.raises(TrainingError, match="nothing to resume"):
        trainer.train(config, tmp_path / "none", resume=True, progress=False)
    trainer.train(config, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="another config"):
        trainer.train(
            build_config(tiny_overrides(tiny_category, lr=0.1)), tmp_path / "run", resume=True, progress=False
        )


def test_checkpoint_round_trip_into_a_fresh_model(tiny_category, tmp_path):
    config = build_config(tiny_overrides(tiny_category))
    path = trainer.train(config, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(path)
    assert ckpt.config == config
    assert ckpt.iteration == config.train.iterations
    assert ckpt.info["n_normal"] == 8 and len(ckpt.info["calibration_normals"]) == 2  # 10 % of 10, at least 2
    assert len(ckpt.info["seen_anomalies"]) == 2
    x = torch.rand(1, 3, 64, 64)
    again = load_checkpoint(
        save_checkpoint(tmp_path / "copy.safetensors", model=ckpt.model, config=config, iteration=4)
    )
    ckpt.model.eval(), again.model.eval()
    assert torch.equal(ckpt.model(x).anomaly_map, again.model(x).anomaly_map)
    assert ckpt.optimizer_state is None
    assert load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").optimizer_state is not None


def test_truncated_or_foreign_checkpoint_gives_a_clear_error(tiny_category, tmp_path):
    config = build_config(tiny_overrides(tiny_category))
    path = trainer.train(config, tmp_path / "run", progress=False)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors.*truncated or corrupt"):
        load_checkpoint(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a prnad checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
