"""The paper's ablations as config fields: each switch changes the model or the data it trains on (Tables 4-7,
and DRA's hard setting with its seen / unseen report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import prnad
from prnad.cli import main
from prnad.config import SynthConfig
from prnad.data import held_out_split, scan_category
from prnad.model import build_encoder, build_prn
from prnad.synthesis.anomalies import heterologous_anomaly
from tests.conftest import FAST_TRAIN

RANDOM = {"encoder": {"weights": "random"}, "decoder_channels": [16, 16, 8]}


def _model(**model) -> torch.nn.Module:
    config = prnad.make_config(overrides={"model": RANDOM | model}).model
    encoder = build_encoder(config.encoder)
    scales = config.head_scales
    prototypes = [torch.rand(2, encoder.channels[i], 64 // (4 * 2**i), 64 // (4 * 2**i)) for i in scales]
    if config.prototype_match == "patch":
        prototypes = [torch.rand(8, encoder.channels[i], 1, 1) for i in scales]
    return build_prn(config, prototypes=prototypes, encoder=encoder).eval()


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_without_prototypes_every_residual_is_zero():
    images = torch.rand(2, 3, 64, 64)
    plain = _model(prototype_match="none")
    parts = plain.encode(images)
    assert all(float(r.abs().max()) == 0 for r in parts.residuals)
    assert any(float(r.abs().max()) > 0 for r in _model(prototype_match="map").encode(images).residuals)


def test_without_multi_scale_fusion_no_scale_reads_another():
    fused, alone = _model(), _model(multi_scale_fusion=False)
    assert len(fused.feature_fusion.transforms) > 0 and len(alone.feature_fusion.transforms) == 0
    assert len(alone.output_fusion.transforms) == 0 and _parameters(alone) < _parameters(fused)
    assert alone(torch.rand(1, 3, 64, 64)).anomaly_map.shape == (1, 1, 64, 64)


def test_without_msa_the_head_has_no_attention_block():
    assert sum(len(s.blocks) for s in _model().attention) > 0
    assert sum(len(s.blocks) for s in _model(msa_scales=[]).attention) == 0


def test_the_plain_unet_has_none_of_the_three():
    plain = _model(prototype_match="none", multi_scale_fusion=False, msa_scales=[])
    assert sum(len(s.blocks) for s in plain.attention) == 0 and len(plain.residual_fusion.transforms) == 0
    assert plain(torch.rand(1, 3, 64, 64)).score.shape == (1,)


def test_without_target_areas_a_simulated_anomaly_leaves_the_foreground():
    """Table 5's TA: with target areas the mask stays inside the object's foreground; without, it does not."""
    normal = np.full((64, 64, 3), 128, dtype=np.uint8)
    texture = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    allowed = np.zeros((64, 64), dtype=bool)
    allowed[16:48, 16:48] = True
    outside = []
    for target_areas in (True, False):
        config = SynthConfig(target_areas=target_areas)
        masks = [
            heterologous_anomaly(normal, texture, np.random.default_rng(s), allowed=allowed, config=config)[1]
            for s in range(5)
        ]
        outside.append(sum(int((m & ~allowed).sum()) for m in masks))
    assert outside[0] == 0 and outside[1] > 0


FAST = {"iterations": 2, "batch_size": 4, "num_workers": 0}


@pytest.mark.parametrize("ratio", [0.05, 0.2, 1.0])
def test_the_prototype_ratio_sets_the_number_of_prototypes(tiny_category: Path, tmp_path: Path, ratio: float):
    """Table 6: K = max(1, round(ratio x N)) whole-map prototypes per scale, N the training normals."""
    model = {**RANDOM, "prototype_match": "map", "prototype_ratio": ratio, "score_bank_size": 0}
    overrides = {"data": {"image_size": 64, "seen_anomalies": 2}, "model": model, "train": FAST}
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=overrides)
    n = detector.info["n_normal"]
    assert [p.shape[0] for p in detector.model.prototypes] == [max(1, round(ratio * n))] * 2


def test_the_hard_setting_draws_every_seen_anomaly_from_one_type(tiny_category: Path):
    category = scan_category(tiny_category)
    seen, test = held_out_split(category, 2, 0, ["hole"])
    assert {s.defect_type for s in seen} == {"hole"} and not set(seen) & set(test)
    with pytest.raises(prnad.DataError, match="no defect type 'dent'.*hole, scratch"):
        held_out_split(category, 2, 0, ["dent"])


def test_the_hard_setting_reports_seen_and_unseen_types_apart(tiny_category: Path, tmp_path: Path, capsys):
    out = tmp_path / "hard"
    argv = ["train", "--data", str(tiny_category), "--out", str(out), *FAST_TRAIN, "--no-progress"]
    assert main([*argv, "--seen-anomalies", "2", "--seen-defect-types", "scratch"]) == 0
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(seen types)" in printed and "(unseen types)" in printed
    result = prnad.load(out).evaluate()
    assert result["seen_unseen"]["seen_types"]["types"] == ["scratch"]
    assert result["seen_unseen"]["unseen_types"]["types"] == ["hole"]
    assert result["seen_unseen"]["unseen_types"]["images"] == result["per_type"]["hole"]["images"]
    assert result["seen_unseen"]["unseen_types"]["image_auroc"] == result["per_type"]["hole"]["image_auroc"]


@pytest.mark.parametrize("banks", [0, 8])
def test_the_staged_forward_is_the_model(banks: int):
    """PRN.staged calls each stage once, in order, and gives the forward pass's output (what speed.py times)."""
    from prnad.model.prn import STAGES

    model = _model(prototype_match="patch", score_bank_size=banks)
    if banks:
        channels = [model.encoder.channels[i] for i in (1, 2)]
        model.set_score_banks([torch.rand(banks, c) for c in channels])
    images = torch.rand(2, 3, 64, 64)
    called = []
    with torch.inference_mode():
        staged = model.staged(images, lambda name, fn, *args: called.append(name) or fn(*args))
        whole = model(images)
    assert called == list(STAGES)
    torch.testing.assert_close(staged.logits, whole.logits)
    torch.testing.assert_close(staged.score, whole.score)
