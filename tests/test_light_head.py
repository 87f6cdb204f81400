"""The default head without stride 4 (``model.head_scales: [1, 2]``): shapes, what it reads, training, export;
the spec's full head beside it, and the fast head whose decoder starts at stride 16 (``model.decoder_bottom``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prnad
from prnad.config import EncoderConfig, ModelConfig
from prnad.errors import ConfigError
from prnad.model import build_encoder, build_prn
from prnad.model.decoder import Decoder, FirstBlock
from prnad.model.prn import FrozenParts
from tests.conftest import tiny_overrides, without_model_key


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
            lambda images, **kw: [
                torch.full_like(f, float("nan")) if i == 0 else f for i, f in enumerate(forward(images, **kw))
            ],
        )
        after = model(x).logits
    torch.testing.assert_close(after, before)  # NaN at stride 4 would spread to every pixel that read it


def test_a_decoder_without_bottom_never_runs_the_stride_32_stage():
    model = _model(head_scales=(1, 2), decoder_channels=(16, 8, 4), decoder_bottom=False)
    assert isinstance(model.decoder.blocks[0], FirstBlock) and not model.decoder.has_bottom

    def refuse(*_):
        raise AssertionError("the stride-32 stage ran")

    model.encoder.stages[3].register_forward_pre_hook(refuse)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        parts = model.encode(x)
    assert out.logits.shape == (2, 1, 64, 64) and torch.isfinite(out.logits).all()
    assert parts.bottom is None and len(parts.tensors()) == 4  # 2 features, 2 residuals
    torch.testing.assert_close(model.head(parts, (64, 64)), out.decoder_logits)


@pytest.mark.parametrize("bottom", [True, False])
def test_frozen_parts_round_trip_through_a_flat_list(bottom: bool):
    features, residuals = (
        [torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2, 2)],
        [torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2, 2)],
    )
    parts = FrozenParts(features=features, residuals=residuals, bottom=torch.rand(1, 5, 1, 1) if bottom else None)
    again = FrozenParts.from_tensors(parts.tensors())
    assert len(parts.tensors()) == 4 + bottom
    for a, b in zip(again.tensors(), parts.tensors(), strict=True):
        assert a is b
    assert (again.bottom is None) == (not bottom)


def test_decoder_widths_match_its_skips():
    with pytest.raises(ValueError, match="one decoder width per skip"):
        Decoder(bottom_channels=8, skip_channels=(4, 4), channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="model.head_scales"):
        ModelConfig(head_scales=(0, 1))


HEADS = {
    "default": {"head_scales": [1, 2], "msa_scales": [2]},
    "light-with-bottom": {"head_scales": [1, 2], "msa_scales": [2], "decoder_bottom": True},
    "spec-full": {"head_scales": [0, 1, 2], "msa_scales": [0, 1, 2], "decoder_bottom": True},
    "fast": {"head_scales": [1, 2], "msa_scales": [2], "decoder_bottom": False, "msa_blocks": 1},
}


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_trains_saves_loads_and_exports(tiny_category: Path, tmp_path: Path, name: str):
    """The default light head (decoder from stride 16), the same with the spec's bottom, the spec's full head
    (``head_scales``, ``msa_scales``, bottom) and the fast head (one MSA block), end to end."""
    head, msa = HEADS[name]["head_scales"], HEADS[name]["msa_scales"]
    values = tiny_overrides(tiny_category)
    values["model"].update(HEADS[name])
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    assert len(detector.model.prototypes) == len(head)
    assert [len(m.blocks) > 0 for m in detector.model.attention] == [i in msa for i in head]
    again = prnad.load(tmp_path / "run", device="cpu")
    image = tiny_category / "test" / "good" / sorted((tiny_category / "test" / "good").iterdir())[0].name
    first, second = detector.predict(image), again.predict(image)
    assert second.score == pytest.approx(first.score, abs=1e-9)
    exported = prnad.load(tmp_path / "run", device="cpu", engine="onnxruntime").predict(image)
    assert abs(exported.anomaly_map - first.anomaly_map).max() < 1e-3


def test_a_checkpoint_from_before_decoder_bottom_loads_with_a_bottom(tmp_path: Path):
    """A stored config without model.decoder_bottom was written when every decoder started at stride 32."""
    from prnad.checkpoint import load_checkpoint, save_checkpoint
    from prnad.config import RunConfig, from_dict, to_dict

    model = _model(decoder_channels=(16, 8, 4), decoder_bottom=True)
    values = to_dict(RunConfig())
    values["model"].update(to_dict(ModelConfig(encoder=EncoderConfig(backbone="resnet18", weights="random"))))
    values["model"].update(prototype_match="map", score_bank_size=0, decoder_channels=[16, 8, 4], decoder_bottom=True)
    path = save_checkpoint(tmp_path / "new.safetensors", model=model, config=from_dict(RunConfig, values), iteration=1)
    loaded = load_checkpoint(without_model_key(path, "decoder_bottom", tmp_path / "old.safetensors"))
    assert loaded.config.model.decoder_bottom and loaded.model.decoder.has_bottom
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x).logits, model(x).logits)
