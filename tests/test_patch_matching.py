"""Position-free prototype matching (``model.prototype_match: patch``): the memory bank, its coreset, the match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prnad.config import EncoderConfig, ModelConfig
from prnad.errors import ConfigError
from prnad.export import OnnxRuntimeEngine, export_onnx
from prnad.fitting import compute_prototypes
from prnad.model import build_encoder, build_prn
from prnad.model.prn import fused_for_inference
from prnad.model.prototypes import coreset, nearest_patch


def test_nearest_patch_is_the_brute_force_nearest_vector():
    g = torch.Generator().manual_seed(0)
    features, bank = torch.randn(3, 8, 5, 6, generator=g), torch.randn(40, 8, 1, 1, generator=g)
    got = nearest_patch(features, bank)
    assert got.shape == features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, 8)  # (B*H*W, C)
    expected = bank.flatten(1)[torch.cdist(queries, bank.flatten(1)).argmin(1)]  # (B*H*W, C)
    torch.testing.assert_close(got.permute(0, 2, 3, 1).reshape(-1, 8), expected)


def test_nearest_patch_moves_smoothly_across_a_near_tie():
    """A query crossing the bisector of two bank vectors: a hard argmin jumps from one to the other (engines
    whose features differ in the last digits could disagree there); the match blends them, the midpoint at
    the tie, and is the nearer vector itself once their squared distances differ by 0.1 %."""
    bank = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 50.0]])[:, :, None, None]  # (3, C=2, 1, 1)

    def match(x: float) -> torch.Tensor:
        return nearest_patch(torch.tensor([[[[x]], [[3.0]]]]), bank)[0, :, 0, 0]  # query (x, 3): (C,)

    torch.testing.assert_close(match(0.0), torch.tensor([0.0, 0.0]))  # exact tie: the midpoint
    eps = 1e-6  # squared distances 10 -+ 2 eps: relative gap 4e-7
    assert (match(eps) - match(-eps)).abs().max() < 0.02  # a hard argmin would move by 2
    assert match(eps)[0] > 0 > match(-eps)[0]  # still leaning to the nearer one
    gap = 0.01 * 10 / 4  # relative gap 1e-2 in squared distance: 100 TIE_WIDTHs
    torch.testing.assert_close(match(gap), torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(match(-gap), torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)


def test_a_normal_location_anywhere_matches_itself():
    bank = torch.randn(16, 4, 1, 1)
    features = torch.zeros(2, 4, 3, 3)
    features[0, :, 2, 1] = bank[5, :, 0, 0]  # a bank vector at another place of another image
    features[1, :, 0, 0] = bank[11, :, 0, 0]
    got = nearest_patch(features, bank)
    torch.testing.assert_close(got[0, :, 2, 1], bank[5, :, 0, 0])
    torch.testing.assert_close(got[1, :, 0, 0], bank[11, :, 0, 0])


def test_coreset_takes_one_vector_from_each_far_cluster_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])  # (150, 2)
    chosen = coreset(points, 3, generator=torch.Generator().manual_seed(1))
    nearest_centre = torch.cdist(chosen, centres).argmin(1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2]
    again = coreset(points, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(chosen, again)
    assert coreset(points, 500, generator=torch.Generator().manual_seed(1)).shape == (150, 2)  # at most all rows


def test_compute_prototypes_with_a_bank_gives_location_vectors():
    encoder = build_encoder(EncoderConfig(backbone="resnet18", weights="random")).eval()
    normals = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    banks = compute_prototypes(
        encoder, normals, ratio=0.1, restarts=1, iterations=2, seed=0, device="cpu", bank_size=20
    )
    assert [tuple(b.shape) for b in banks] == [(20, c, 1, 1) for c in encoder.channels[:3]]


def _patch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        encoder=EncoderConfig(backbone="resnet18", weights="random"),
        decoder_channels=(16, 16, 8),
        prototype_match="patch",
    )
    encoder = build_encoder(config.encoder)
    banks = [torch.randn(30, encoder.channels[i], 1, 1) for i in config.head_scales]
    return fused_for_inference(build_prn(config, prototypes=banks, encoder=encoder))


def test_prn_with_patch_matching_runs_and_exports(tmp_path):
    model = _patch_model()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (3, 1, 64, 64) and torch.isfinite(out.logits).all()
    engine = OnnxRuntimeEngine(export_onnx(model, tmp_path / "m.onnx", image_size=64))
    got = engine(x)
    assert (got.anomaly_map - out.anomaly_map).abs().max() < 1e-3


def test_bank_size_is_checked():
    with pytest.raises(ConfigError, match="patch_bank_size"):
        ModelConfig(prototype_match="patch", patch_bank_size=0)


def test_coreset_is_greedy_farthest_point_selection():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(3))
    got = coreset(x, 20, generator=torch.Generator().manual_seed(4))
    first = int(torch.randint(300, (1,), generator=torch.Generator().manual_seed(4)))  # the same first draw
    chosen = [first]
    for _ in range(19):  # the reference: exact distances to every chosen row, farthest next
        d = torch.cdist(x, x[chosen], compute_mode="donot_use_mm_for_euclid_dist").min(1).values
        chosen.append(int(d.argmax()))
    assert torch.equal(got, x[chosen])
