"""The training cache of frozen parts: the stream names its unchanged images, the cache serves exactly what the
model would compute, within its memory budget, and training with it matches training without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prnad.config import ModelConfig, SynthConfig, build_config
from prnad.model import build_prn
from prnad.model.encoder import EncoderConfig
from prnad.training import trainer
from prnad.training.cache import FeatureCache
from prnad.training.sampler import AnomalyStream, TrainingPool
from tests.conftest import tiny_overrides


def _pool(n: int = 5, size: int = 64) -> TrainingPool:
    rng = np.random.default_rng(1)
    normals = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    seen = rng.integers(0, 255, (2, size, size, 3), dtype=np.uint8)
    masks = np.zeros((2, size, size), dtype=bool)
    masks[:, 20:40, 20:40] = True
    return TrainingPool(normals, np.ones((n, size, size), bool), seen, masks, normals[:2].copy())


def test_the_stream_names_the_unchanged_images_it_serves():
    pool = _pool()
    unchanged = torch.from_numpy(pool.unchanged()).permute(0, 3, 1, 2).float().div(255)  # (N + M, 3, S, S)
    stream = AnomalyStream(pool, SynthConfig(), seed=2, batch_size=8, start=0, stop=64)
    kinds = {"normal": 0, "seen": 0, "made": 0}
    for i in range(64):
        image, _, source = stream[i]
        kind = stream.kind_at(*divmod(i, 8))
        if kind in ("normal", "seen"):
            assert torch.equal(image, unchanged[source]), (i, kind)
            assert (source < len(pool.normals)) == (kind == "normal")
            kinds[kind] += 1
        else:
            assert source == -1
            kinds["made"] += 1
    assert min(kinds.values()) > 0


def _model(pool: TrainingPool, bottom: bool = False):
    config = ModelConfig(encoder=EncoderConfig(weights="random"), decoder_channels=(16, 16, 8), decoder_bottom=bottom)
    torch.manual_seed(0)
    prototypes = [torch.randn(16, c) for c in (128, 256)]  # patch banks (M, C_i), ResNet18 strides 8 and 16
    return build_prn(config, prototypes=prototypes).eval()


@pytest.mark.parametrize("bottom", [False, True])
def test_cached_parts_equal_the_computed_ones_and_respect_the_budget(bottom: bool):
    pool = _pool()
    model = _model(pool, bottom)
    unchanged = pool.unchanged()
    cache = FeatureCache(model, unchanged, budget_mb=64, device=torch.device("cpu"), batch_size=3)
    assert len(cache) == len(unchanged) == 7
    images = torch.from_numpy(np.stack([unchanged[4], unchanged[0], unchanged[6], unchanged[2]]))
    images = images.permute(0, 3, 1, 2).float().div(255)  # (4, 3, 64, 64)
    images[2] = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))  # a made anomaly, not cached
    sources = torch.tensor([4, 0, -1, 2])
    expected = model.encode(images).tensors()
    got = cache.parts(model, images, sources).tensors()
    assert len(got) == len(expected) == 4 + bottom  # features and residuals at 2 scales, and the stride-32 map
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)  # float bits differ by batch size
    one_image = sum(t[:1].numel() * t.element_size() for t in cache.tensors)
    small = FeatureCache(model, unchanged, budget_mb=1, device=torch.device("cpu"))
    assert len(small) == min(7, 2**20 // one_image)
    assert len(FeatureCache(model, unchanged, budget_mb=0, device=torch.device("cpu"))) == 0
    for g, e in zip(small.parts(model, images, sources).tensors(), expected, strict=True):  # beyond it: computed
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)  # float bits differ by batch size


def test_training_with_the_cache_matches_training_without(tiny_category, tmp_path):
    reference = trainer.train(
        build_config(tiny_overrides(tiny_category, feature_cache_mb=0)), tmp_path / "ref", progress=False
    )
    run = trainer.train(
        build_config(tiny_overrides(tiny_category, feature_cache_mb=64)), tmp_path / "run", progress=False
    )
    a, b = load_file(str(reference)), load_file(str(run))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4, msg=key)
