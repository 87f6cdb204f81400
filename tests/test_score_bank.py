"""The image score with memory banks (``model.score_bank_size`` > 0): distances, banks, standardisation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prnad
from prnad.config import EncoderConfig, ModelConfig, build_config
from prnad.errors import ConfigError
from prnad.export import OnnxRuntimeEngine, export_onnx
from prnad.fitting import compute_score_banks
from prnad.model import build_encoder, build_prn
from prnad.model.prn import SCORE_SCALES, fused_for_inference, topk_score
from prnad.model.prototypes import nearest_distance_map
from prnad.training.calibration import normal_outputs
from tests.conftest import score_tolerance, tiny_overrides, without_model_key


def test_nearest_distance_map_is_the_brute_force_one():
    g = torch.Generator().manual_seed(0)
    features, bank = torch.randn(3, 8, 5, 6, generator=g), torch.randn(40, 8, generator=g)
    got = nearest_distance_map(features, bank)
    assert got.shape == (3, 1, 5, 6)
    pooled = torch.nn.functional.avg_pool2d(features, 3, stride=1, padding=1)  # zero-padded 3x3 mean
    queries = pooled.permute(0, 2, 3, 1).reshape(3, -1, 8)  # (B, H*W, C)
    expected = torch.stack([torch.cdist(q, bank).min(1).values for q in queries]).view(3, 1, 5, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_image_of_one_vector_is_at_distance_zero_from_its_zero_padded_means():
    v = torch.randn(4)
    features = v.view(1, 4, 1, 1).expand(1, 4, 5, 5).contiguous()  # one vector everywhere
    inside, edge, corner = v, v * 6 / 9, v * 4 / 9  # the 3x3 means: zero padding at the border
    # 0 up to float32 cancellation in ||q||^2 + ||r||^2 - 2 q.r (sqrt of ~1e-7)
    assert float(nearest_distance_map(features, torch.stack([inside, edge, corner])).max()) < 2e-3
    got = float(nearest_distance_map(features, torch.stack([inside, edge])).max())  # no corner vector
    assert got == pytest.approx(float((corner - edge).norm()), rel=1e-4)


def test_score_banks_are_coreset_vectors_of_the_averaged_maps_and_seeded():
    encoder = build_encoder(EncoderConfig(backbone="resnet18", weights="random")).eval()
    normals = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    banks = compute_score_banks(encoder, normals, size=25, seed=0, device="cpu")
    assert [tuple(b.shape) for b in banks] == [(25, encoder.channels[i]) for i in SCORE_SCALES]
    again = compute_score_banks(encoder, normals, size=25, seed=0, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(banks, again, strict=True))
    with torch.no_grad():
        maps = encoder(torch.from_numpy(normals).permute(0, 3, 1, 2).float() / 255)
    for i, bank in zip(SCORE_SCALES, banks, strict=True):
        pooled = torch.nn.functional.avg_pool2d(maps[i], 3, stride=1, padding=1)
        vectors = pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1])
        exact = torch.cdist(bank, vectors, compute_mode="donot_use_mm_for_euclid_dist")
        assert exact.min(1).values.max() < 1e-6  # every bank row is one of the vectors


def _banked_model_config() -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(backbone="resnet18", weights="random"),
        decoder_channels=(16, 16, 8),
        score_bank_size=30,
        prototype_match="map",
        bank_map_weights=(0.75, 0.5),
    )


def _banked_model(*, fused: bool = True, sizes: tuple[int, int] = (30, 30)) -> torch.nn.Module:
    torch.manual_seed(0)
    config = _banked_model_config()
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(2, encoder.channels[i], 64 // encoder.reductions[i], 64 // encoder.reductions[i])
        for i in config.head_scales
    ]
    banks = [torch.randn(m, encoder.channels[i]) for i, m in zip(SCORE_SCALES, sizes, strict=True)]
    model = build_prn(config, prototypes=protos, encoder=encoder, score_banks=banks).eval()
    model = fused_for_inference(model) if fused else model
    model.score_stats.copy_(torch.tensor([[0.2, 3.0, 5.0], [0.1, 2.0, 4.0]]))
    model.map_stats.copy_(torch.tensor([[-1.0, 2.0, 3.0], [0.5, 4.0, 8.0]]))
    return model


def test_the_score_and_the_map_are_sums_of_standardised_parts():
    model = _banked_model()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64))
    assert out.distances.shape == (3, 2)
    topk = topk_score(out.decoder_logits, model.topk)
    d = out.distances.double()
    expected = (topk - 0.2) / 0.1 + (d[:, 0] - 3.0) / 2.0 + (d[:, 1] - 5.0) / 4.0
    torch.testing.assert_close(out.score, expected)
    with torch.no_grad():
        *encoded, _ = model.encoder(torch.rand(1, 3, 64, 64))
        maps = model.distance_maps(encoded)  # (1, 1, 8, 8) at stride 8 and (1, 1, 4, 4) at stride 16
    up = [torch.nn.functional.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in maps]
    decoder = torch.randn(1, 1, 64, 64)
    fused = model.output(decoder, maps).logits
    z = (decoder + 1.0) / 0.5 + 0.75 * (up[0] - 2.0) / 4.0 + 0.5 * (up[1] - 3.0) / 8.0  # weighted z-scores
    torch.testing.assert_close(fused, -1.0 + 0.5 * z)  # mean_L + std_L * z: ranks pixels as z
    assert torch.equal(out.anomaly_map, torch.sigmoid(out.logits))
    with pytest.raises(ValueError, match="score banks"):
        model.output(out.decoder_logits)


@pytest.mark.parametrize("sizes", [(30, 30), (30, 7)])
def test_the_banked_score_exports(tmp_path: Path, sizes: tuple[int, int]):
    """The whole banked model in one ONNX graph gives PyTorch's score and map, banks of one size or of two."""
    model = _banked_model(sizes=sizes)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    got = OnnxRuntimeEngine(export_onnx(model, tmp_path / "m.onnx", image_size=64))(x)
    torch.testing.assert_close(got.score.double(), out.score, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got.logits, out.logits, rtol=1e-4, atol=1e-3)  # the map weights are in the graph


def test_bank_map_weights_weigh_the_maps_and_are_checked():
    model = _banked_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits, maps = model.decode(x)
        weighted = model.output(logits, maps).logits
        model.bank_map_weights = (0.0, 0.0)
        assert torch.equal(model.output(logits, maps).logits, logits)  # no bank in the map: the decoder's own
        model.bank_map_weights = (0.75, 0.0)
        stride8 = model.output(logits, maps).logits
    up16 = model.upsampled(maps, logits)[1]
    torch.testing.assert_close(weighted, stride8 + 0.5 * 0.5 * (up16 - 3.0) / 8.0)  # std_L * w_16 * z_16
    with pytest.raises(ConfigError, match="bank_map_weights"):
        ModelConfig(bank_map_weights=(1.0, -0.5))
    with pytest.raises(ConfigError, match="bank_map_weights"):
        ModelConfig(bank_map_weights=(1.0,))


def test_a_banked_checkpoint_from_before_map_weights_loads_with_equal_weights(tmp_path: Path):
    """A stored config without model.bank_map_weights was made when both banks' maps weighed 1 (the default
    of then), not today's."""
    from prnad.checkpoint import load_checkpoint, save_checkpoint
    from prnad.config import RunConfig, from_dict, to_dict

    model = _banked_model(fused=False)  # as training saves it
    model.bank_map_weights = (1.0, 1.0)
    values = to_dict(RunConfig())
    values["model"].update(to_dict(_banked_model_config()), bank_map_weights=[1.0, 1.0])
    config = from_dict(RunConfig, values)
    path = save_checkpoint(tmp_path / "new.safetensors", model=model, config=config, iteration=1)
    loaded = load_checkpoint(without_model_key(path, "bank_map_weights", tmp_path / "old.safetensors"))
    assert loaded.config.model.bank_map_weights == (1.0, 1.0) == loaded.model.bank_map_weights
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x).logits, model(x).logits)


def test_score_banks_need_held_out_normals(tiny_category: Path):
    values = tiny_overrides(tiny_category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.0}
    with pytest.raises(ConfigError, match="holdout_fraction"):
        build_config(values)
    with pytest.raises(ConfigError, match="score_bank_size"):
        ModelConfig(score_bank_size=-1)


def test_training_standardises_the_score_on_the_held_out_normals(tiny_category: Path, tmp_path: Path):
    values = tiny_overrides(tiny_category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.3, "calibration_anomalies": 4}
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    stats = detector.info["score_stats"]
    assert stats["normals"] == 3 and len(stats["image_mean"]) == 3 and min(stats["image_std"] + stats["pixel_std"]) > 0
    # the held-out normals' scores are sums of three zero-mean z-scores: their mean is 0
    held = [tiny_category / p for p in detector.info["calibration_normals"]]
    scores = [p.score for p in detector.predict(held)]
    assert abs(np.mean(scores)) < 1e-4
    # the same for their pixels: the fused logits average to the decoder's normal-pixel mean
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in held]))
    with torch.no_grad():
        fused = detector.model(pixels.permute(0, 3, 1, 2).float() / 255).logits
    assert float(fused.double().mean()) == pytest.approx(stats["pixel_mean"][0], abs=1e-3)
    again = prnad.load(tmp_path / "run", device="cpu")  # banks and statistics come back from the checkpoint
    assert [p.score for p in again.predict(held)] == pytest.approx(scores, abs=1e-9)
    # the stored calibration scores are out of sample: each is what predict gives with the statistics of the
    # other two (leave one out), the numbers a new normal image's score is made of
    assert detector.info["thresholds"]["out_of_sample"]
    parts = normal_outputs(detector.model, load_samples_of(held), torch.device("cpu"))
    pixels = parts.pixels  # (3, S*S, 3)
    for j, stored in enumerate(detector.info["thresholds"]["normal_scores"]):
        others = torch.arange(3) != j
        detector.model.score_stats.copy_(_stats(parts.parts[others]))
        detector.model.map_stats.copy_(_stats(pixels[others].flatten(0, 1)))
        expected = detector.predict(held[j]).score
        assert stored == pytest.approx(expected, abs=score_tolerance(detector, expected))
        assert abs(stored - scores[j]) > 10 * score_tolerance(detector, expected)  # not the in-sample score


def load_samples_of(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _stats(values: torch.Tensor) -> torch.Tensor:
    """(N, P) -> (2, P) float32: mean and ddof-1 spread, as the calibration computes them."""
    return torch.stack([values.mean(0), values.std(0).clamp_min(1e-6)]).float()


def test_calibration_scores_the_held_out_normals_as_predict_does(tiny_category: Path, tmp_path: Path):
    """With two held-out normals (too few to leave one out) the stored scores are the model's own, computed as
    predict computes them (alone, in predict's batches): the same float32 sums, exactly."""
    values = tiny_overrides(tiny_category)
    values["model"]["score_bank_size"] = 16
    values["threshold"] = {"holdout_fraction": 0.2, "calibration_anomalies": 4}
    detector = prnad.train(tiny_category, tmp_path / "run", overrides=values)
    held = [tiny_category / p for p in detector.info["calibration_normals"]]
    assert len(held) == 2 and not detector.info["thresholds"]["out_of_sample"]
    assert detector.info["thresholds"]["normal_scores"] == [p.score for p in detector.predict(held)]


def test_banks_added_to_a_trained_run_equal_training_with_them(tiny_category: Path, tmp_path: Path):
    """The banks never enter the loss: ``benchmarks/score_bank.py`` on a run trained without them gives the
    model, statistics and thresholds that training with them gives."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import score_bank

    values = tiny_overrides(tiny_category)
    values["threshold"] = {"holdout_fraction": 0.3, "calibration_anomalies": 4}
    prnad.train(tiny_category, tmp_path / "plain", overrides=values)
    values["model"]["score_bank_size"] = 16
    trained = prnad.train(tiny_category, tmp_path / "banked", overrides=values)
    score_bank.main([str(tmp_path / "plain"), "--size", "16", "--results", str(tmp_path / "results")])
    added = prnad.load(tmp_path / "plain_bank16", device="cpu")
    a, b = trained.model.state_dict(), added.model.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert added.info["score_stats"] == trained.info["score_stats"]
    assert added.info["thresholds"] == trained.info["thresholds"]
    report = (tmp_path / "results" / "score_bank.md").read_text()
    assert "| banks 16, map weights 1 / 0.5 |" in report and "Means over the seeds measured" in report
    # --map-weights: the same network and banks, the maps weighed anew, the pixel threshold refitted on them
    args = ["--map-weights", "1", "0", "--size", "16", "--name", "w", "--results", str(tmp_path / "results")]
    score_bank.main([str(tmp_path / "banked"), *args])
    reweighed = prnad.load(tmp_path / "banked_bank16_w1-0", device="cpu")
    assert reweighed.config.model.bank_map_weights == (1.0, 0.0) == reweighed.model.bank_map_weights
    c = reweighed.model.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a) and reweighed.info["score_stats"] == trained.info["score_stats"]
    assert reweighed.info["thresholds"]["pixel"] != trained.info["thresholds"]["pixel"]
    image = np.asarray(Image.open(next((tiny_category / "test" / "good").iterdir())).convert("RGB"))
    before = trained.predict([image])[0].anomaly_map
    trained.model.bank_map_weights = (1.0, 0.0)
    expected = trained.predict([image])[0].anomaly_map
    assert np.abs(expected - before).max() > 1e-4
    np.testing.assert_allclose(reweighed.predict([image])[0].anomaly_map, expected, atol=1e-6)
    assert "| banks 16, map weights 1 / 0 |" in (tmp_path / "results" / "w.md").read_text()


def test_a_coarser_query_grid_takes_every_other_location_of_the_full_map():
    g = torch.Generator().manual_seed(1)
    features, bank = torch.randn(2, 8, 8, 6, generator=g), torch.randn(40, 8, generator=g)
    full = nearest_distance_map(features, bank)  # (2, 1, 8, 6)
    coarse = nearest_distance_map(features, bank, step=2)
    assert coarse.shape == (2, 1, 4, 3)
    torch.testing.assert_close(coarse, full[..., ::2, ::2], rtol=1e-5, atol=1e-5)


def test_bank_query_stride_16_queries_the_stride_8_bank_on_the_stride_16_grid(tmp_path: Path):
    model = _banked_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        encoded = model.encoder(x)[:3]
        full = model.distance_maps(encoded)  # (2, 1, 8, 8) at stride 8, (2, 1, 4, 4) at stride 16
        model.set_bank_query_stride(16)
        coarse = model.distance_maps(encoded)
        out = model(x)
    assert [tuple(m.shape) for m in coarse] == [(2, 1, 4, 4), (2, 1, 4, 4)]
    torch.testing.assert_close(coarse[0], full[0][..., ::2, ::2], rtol=1e-5, atol=1e-5)
    assert torch.equal(coarse[1], full[1])  # the stride-16 bank keeps its own grid
    got = OnnxRuntimeEngine(export_onnx(model, tmp_path / "m.onnx", image_size=64))(x)
    torch.testing.assert_close(got.logits, out.logits, rtol=1e-4, atol=1e-3)  # the coarse grid is in the graph
    with pytest.raises(ValueError, match="bank_query_stride"):
        model.set_bank_query_stride(4)
    with pytest.raises(ConfigError, match="bank_query_stride"):
        ModelConfig(bank_query_stride=12)
    config = dataclasses.replace(_banked_model_config(), bank_query_stride=16)
    assert build_prn(config, prototypes=list(model.prototypes), score_banks=model.score_banks).bank_steps == (2, 1)


def test_a_coarse_bank_of_its_own_size_is_the_first_rows_of_the_full_one():
    """compute_score_banks with one size per scale: the stride-16 bank of 10 is the first 10 rows of the one of
    25 (greedy coreset order, a scale's draws independent of its size), the stride-8 bank is unchanged."""
    encoder = build_encoder(EncoderConfig(backbone="resnet18", weights="random")).eval()
    normals = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    full = compute_score_banks(encoder, normals, size=25, seed=0, device="cpu")
    mixed = compute_score_banks(encoder, normals, size=(25, 10), seed=0, device="cpu")
    assert torch.equal(mixed[0], full[0]) and torch.equal(mixed[1], full[1][:10])
    with pytest.raises(ValueError, match="bank size"):
        compute_score_banks(encoder, normals, size=(25,), seed=0, device="cpu")


def test_coarse_bank_size_trains_checks_and_adds_as_training_does(tiny_category: Path, tmp_path: Path):
    """model.coarse_bank_size: the stride-16 bank gets its own size in training (the checkpoint keeps it);
    score_bank.py --coarse-size gives what training gives; without banks, or below 1, it is refused."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import score_bank

    assert ModelConfig(score_bank_size=16).score_bank_sizes == (16, 16)
    assert ModelConfig(score_bank_size=16, coarse_bank_size=4).score_bank_sizes == (16, 4)
    assert ModelConfig(score_bank_size=0).score_bank_sizes == (0, 0)
    for bad in ({"score_bank_size": 0, "coarse_bank_size": 4}, {"score_bank_size": 16, "coarse_bank_size": 0}):
        with pytest.raises(ConfigError, match="coarse_bank_size"):
            ModelConfig(**bad)
    values = tiny_overrides(tiny_category)
    values["threshold"] = {"holdout_fraction": 0.3, "calibration_anomalies": 4}
    prnad.train(tiny_category, tmp_path / "plain", overrides=values)
    values["model"].update(score_bank_size=16, coarse_bank_size=6)
    trained = prnad.train(tiny_category, tmp_path / "banked", overrides=values)
    assert [len(b) for b in trained.model.score_banks] == [16, 6]
    again = prnad.load(tmp_path / "banked", device="cpu")
    assert [len(b) for b in again.model.score_banks] == [16, 6]
    args = ["--size", "16", "--coarse-size", "6", "--results", str(tmp_path / "results")]
    score_bank.main([str(tmp_path / "plain"), *args])
    added = prnad.load(tmp_path / "plain_bank16-6", device="cpu")
    a, b = trained.model.state_dict(), added.model.state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert added.info["thresholds"] == trained.info["thresholds"]
    assert (
        "| banks 16 (stride 8) / 6 (stride 16), map weights 1 / 0.5 |"
        in (tmp_path / "results" / "score_bank.md").read_text()
    )


@pytest.mark.parametrize("match", ["map", "patch"])
def test_the_forward_pass_traces_into_one_graph(match: str):
    """No host synchronisation in PRN's forward (no .item(), no shapes or branches that depend on values):
    torch.compile's tracer takes it whole, without a graph break, as CUDA-graph capture (the GPU path's batch-1
    latency) needs. Map prototypes and patch matching, both with score banks."""
    model = _banked_model()
    if match == "patch":
        from tests.test_patch_matching import _patch_model

        model = _patch_model()
        model.set_score_banks([torch.randn(30, c) for c in (model.encoder.channels[i] for i in SCORE_SCALES)])
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(torch.rand(2, 3, 64, 64))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
