"""The default head without stride 4 (``model.head_scales: [1, 2]``): shapes, what it reads, training, export;
and the spec's full head beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prnad
from prnad.config import EncoderConfig, ModelConfig
from prnad.errors import ConfigError
from prnad.model import build_encoder, build_prn
from prnad.model.decoder import Decoder
from tests.conftest import tiny_overrides


def _model(**model_kw) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"prototype_match": "map", "score_bank_size": 0}  # whole-map prototypes (defaults: patch, banks)
    config = ModelConfig(encoder=EncoderConfig(backbone="resnet18", weights="random"), **{**spec, **model_kw})
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(3, encoder.channels[i], 64 // encoder.reductions[i], 64 // encoder.reductions[i])
        for i in config.head_scales
    ]
    return build_prn(config, prototypes=protos, encoder=encoder).eval()


def test_the_head_has_one_part_per_scale_and_decodes_at_stride_8():
    model = _model(head_scales=(1, 2), decoder_channels=(16, 8, 4))
    assert len(model.prototypes) == 2 and len(model.attention) == 2
    assert [b.fuse[-1][0].out_channels for b in model.decoder.blocks] == [16, 8]  # the first two widths
    assert model.feature_fusion.channels == (128, 256)  # resnet18 at strides 8 and 16
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.logits.shape == (2, 1, 64, 64) and torch.isfinite(out.logits).all()


def test_the_head_never_reads_the_stride_4_map(monkeypatch):
    model = _model(head_scales=(1, 2), decoder_channels=(16, 8, 4))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x).logits
        forward = model.encoder.forward
        monkeypatch.setattr(
            model.encoder,
            "forward",
            lambda images: [torch.full_like(f, float("nan")) if i == 0 else f for i, f in enumerate(forward(images))],
        )
        after = model(x).logits
    torch.testing.assert_close(after, before)  # NaN at stride 4 would spread to every pixel that read it


def test_decoder_widths_match_its_skips():
    with pytest.raises(ValueError, match="one decoder width per skip"):
        Decoder(bottom_channels=8, skip_channels=(4, 4), channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="model.head_scales"):
        ModelConfig(head_scales=(0, 1))


@pytest.mark.parametrize("scales", [([1, 2], [2]), ([0, 1, 2], [0, 1, 2])], ids=["default-light", "spec-full"])
def test_either_head_trains_saves_loads_and_exports(tiny_category: Path, tmp_path: Path, scales):
    """The default light head and the spec's full head (``head_scales``, ``msa_scales``), end to end."""
    head, msa = scales
    values = tiny_overrides(tiny_category)
    values["model"].update(head_scales=head, msa_scales=msa)
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    assert len(detector.model.prototypes) == len(head)
    assert [len(m.blocks) > 0 for m in detector.model.attention] == [i in msa for i in head]
    again = prnad.load(tmp_path / "run", device="cpu")
    image = tiny_category / "test" / "good" / sorted((tiny_category / "test" / "good").iterdir())[0].name
    first, second = detector.predict(image), again.predict(image)
    assert second.score == pytest.approx(first.score, abs=1e-9)
    exported = prnad.load(tmp_path / "run", device="cpu", engine="onnxruntime").predict(image)
    assert abs(exported.anomaly_map - first.anomaly_map).max() < 1e-3
