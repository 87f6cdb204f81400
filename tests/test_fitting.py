"""Prototype fitting (bounded memory, same results as the unchunked code) and the float64 top-K image score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prnad.config import EncoderConfig, ModelConfig
from prnad.fitting import compute_prototypes, encode_normals
from prnad.model import build_encoder, build_prn
from prnad.model.prn import topk_score
from prnad.model.prototypes import _kmeans_pp_init, _lloyd, combine_rows, gram_matrix, kmeans, prototype_count


def _unchunked_kmeans(x: torch.Tensor, k: int, *, restarts: int, iterations: int, generator) -> torch.Tensor:
    """K-means as it was before chunking (commit c2884df): a float64 copy of the whole x and its Gram matrix."""
    x64 = x.double()
    gram = x64 @ x64.T
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        weights, inertia = _lloyd(gram, _kmeans_pp_init(gram, k, generator), iterations)
        if inertia < best_inertia:
            best, best_inertia = weights, inertia
    return (best @ x64).to(x.dtype)


@torch.no_grad()
def _list_and_cat_encode(encoder, images: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """The training loop's encoder pass before fitting.py (commit c2884df): batches in lists, then torch.cat."""
    per_scale = [[], [], []]
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float().div(255)
        for i, f in enumerate(encoder(batch)[:3]):
            per_scale[i].append(f)
    return [torch.cat(maps) for maps in per_scale]


def _assignments(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), centres.double()).argmin(1)


def _encoder(backbone: str = "resnet18"):
    torch.manual_seed(0)
    return build_encoder(EncoderConfig(backbone=backbone, weights="random"))


def _images(n: int, side: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ K-means, chunked


@pytest.mark.parametrize("chunk_columns", [None, 1, 7, 1000])
def test_chunked_gram_and_centres_match_the_float64_products(chunk_columns):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 100, generator=g) * 3 + 1
    w = torch.rand(4, 12, generator=g, dtype=torch.float64)
    x64 = x.double()
    torch.testing.assert_close(gram_matrix(x, chunk_columns=chunk_columns), x64 @ x64.T, rtol=1e-12, atol=1e-10)
    centres = combine_rows(w, x, chunk_columns=chunk_columns)
    assert centres.dtype == torch.float32 and centres.shape == (4, 100)
    torch.testing.assert_close(centres, (w @ x64).float(), rtol=0, atol=0)


@pytest.mark.parametrize(("seed", "chunk_columns"), [(0, None), (1, 7), (2, 64), (3, 1)])
def test_chunked_kmeans_gives_the_unchunked_assignments_and_centres(seed, chunk_columns):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(5, 300, generator=g) * 2
    x = (means[torch.randint(5, (41,), generator=g)] + torch.randn(41, 300, generator=g)).float()  # (N, D)
    new = kmeans(
        x, 6, restarts=3, iterations=50, generator=torch.Generator().manual_seed(seed), chunk_columns=chunk_columns
    )
    old = _unchunked_kmeans(x, 6, restarts=3, iterations=50, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(_assignments(x, new), _assignments(x, old))
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)


def test_chunked_kmeans_on_unstructured_data_matches_too():
    x = torch.randn(60, 500, generator=torch.Generator().manual_seed(5))
    new = kmeans(x, 7, restarts=4, iterations=50, generator=torch.Generator().manual_seed(0), chunk_columns=33)
    old = _unchunked_kmeans(x, 7, restarts=4, iterations=50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_assignments(x, new), _assignments(x, old))
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ fitting


def test_encode_normals_fills_each_scale_in_place_with_the_list_and_cat_result():
    encoder, images = _encoder(), _images(5)
    got = encode_normals(encoder, images, device="cpu", batch_size=2)  # 2 + 2 + 1: a ragged last batch
    want = _list_and_cat_encode(encoder, images, batch_size=2)
    assert [tuple(f.shape) for f in got] == [(5, 64, 16, 16), (5, 128, 8, 8), (5, 256, 4, 4)]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and a.is_contiguous()
        assert torch.equal(a, b)


@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_compute_prototypes_matches_the_training_loop_before_the_move(ratio):
    encoder, images = _encoder(), _images(10)
    got = compute_prototypes(
        encoder, images, ratio=ratio, restarts=2, iterations=20, seed=3, device="cpu", batch_size=4
    )
    k = prototype_count(10, ratio)
    generator = torch.Generator().manual_seed(3)
    for protos, maps in zip(got, _list_and_cat_encode(encoder, images, batch_size=16), strict=True):
        want = _unchunked_kmeans(maps.flatten(1), k, restarts=2, iterations=20, generator=generator) if k < 10 else maps
        assert protos.shape == (k, *maps.shape[1:])
        assert torch.equal(
            _assignments(maps.flatten(1), protos.flatten(1)), _assignments(maps.flatten(1), want.flatten(1))
        )
        torch.testing.assert_close(protos, want.view_as(protos), rtol=1e-5, atol=1e-5)


def test_compute_prototypes_works_for_every_encoder_shape():
    got = compute_prototypes(
        _encoder("mobilenet_v2"), _images(4), ratio=0.5, restarts=1, iterations=5, seed=0, device="cpu"
    )
    assert [tuple(p.shape) for p in got] == [(2, 24, 16, 16), (2, 32, 8, 8), (2, 96, 4, 4)]
    assert all(torch.isfinite(p).all() for p in got)


@pytest.mark.parametrize(
    "images",
    [np.zeros((3, 64, 64), np.uint8), np.zeros((3, 64, 64, 3), np.float32), np.zeros((0, 64, 64, 3), np.uint8)],
)
def test_encode_normals_rejects_other_arrays(images):
    with pytest.raises(ValueError, match="uint8"):
        encode_normals(_encoder(), images, device="cpu")


# ------------------------------------------------------------------------------------------------ image score


def test_float32_sigmoid_ties_strong_pixels_at_one():
    """The defect the float64 score removes: in float32, logits 20 and 25 both give exactly 1.0."""
    assert torch.sigmoid(torch.tensor([20.0, 25.0])).eq(1.0).all()


def test_scores_of_saturated_maps_do_not_tie():
    logits = torch.stack([torch.full((1, 8, 8), 20.0), torch.full((1, 8, 8), 25.0)])  # (2, 1, 8, 8)
    score = topk_score(logits, 10)
    assert score.dtype == torch.float64
    assert score[0] < score[1] < 1.0
    torch.testing.assert_close(
        score, torch.sigmoid(torch.tensor([20.0, 25.0], dtype=torch.float64)), rtol=1e-15, atol=0
    )


def test_score_is_the_mean_of_the_top_k_pixels_of_the_float64_sigmoid():
    logits = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 4
    want = torch.sigmoid(logits.double()).flatten(1).sort(1, descending=True).values[:, :7].mean(1)
    torch.testing.assert_close(topk_score(logits, 7), want, rtol=1e-15, atol=0)


def test_score_with_k_larger_than_the_map_averages_every_pixel():
    logits = torch.tensor([[[[0.0, 1.0], [-1.0, 30.0]]]])  # (1, 1, 2, 2)
    torch.testing.assert_close(topk_score(logits, 100), torch.sigmoid(logits.double()).mean().view(1))


def test_prn_returns_a_float64_score_from_its_logits_and_a_float32_map():
    torch.manual_seed(0)
    config = ModelConfig(
        encoder=EncoderConfig(backbone="resnet18", weights="random"),
        decoder_channels=(16, 16, 8),
        prototype_match="map",
        score_bank_size=0,
    )
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(2, encoder.channels[i], 64 // encoder.reductions[i], 64 // encoder.reductions[i])
        for i in config.head_scales
    ]
    model = build_prn(config, prototypes=protos, encoder=encoder).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.anomaly_map.dtype == torch.float32 and out.score.dtype == torch.float64
    assert torch.equal(out.anomaly_map, torch.sigmoid(out.logits))
    assert torch.equal(out.score, topk_score(out.logits, config.topk))
    assert isinstance(float(out.score[0]), float)
