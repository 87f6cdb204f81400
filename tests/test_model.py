"""Shape and behaviour tests of every model part, on random weights and tiny inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from prnad.config import EncoderConfig, LossConfig, ModelConfig, RunConfig, from_dict, to_dict
from prnad.encoders import ENCODERS
from prnad.errors import CheckpointError, ConfigError
from prnad.model import build_encoder, build_prn, prn_loss
from prnad.model.attention import MSABlock, MSAStack, _merge, _partition, pooled_size, window_attention
from prnad.model.decoder import Decoder
from prnad.model.encoder import Conv2dTFSame, check_weights_source
from prnad.model.fusion import MultiScaleFusion
from prnad.model.loss import focal_loss
from prnad.model.prn import fused_for_inference, topk_score
from prnad.model.prototypes import kmeans, nearest_prototype, prototype_count, residual

SIZES = [(64, 16), (32, 8), (16, 4)]


def _maps(batch: int, channels: tuple[int, ...], side: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, c, side >> i, side >> i, generator=g) for i, c in enumerate(channels)]


def _model(backbone: str = "resnet18", size: int = 64, **model_kw) -> torch.nn.Module:
    torch.manual_seed(0)
    # the spec's model: whole-map prototypes, no score banks, the head and MSA on all three scales (the defaults:
    # patch matching, banks, the light head at strides 8 and 16)
    spec = {"prototype_match": "map", "score_bank_size": 0, "head_scales": (0, 1, 2), "msa_scales": (0, 1, 2)}
    config = ModelConfig(
        encoder=EncoderConfig(backbone=backbone, weights="random"), decoder_channels=(16, 16, 8), **{**spec, **model_kw}
    )
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(3, encoder.channels[i], size // encoder.reductions[i], size // encoder.reductions[i])
        for i in config.head_scales
    ]
    return build_prn(config, prototypes=protos, encoder=encoder)


# ------------------------------------------------------------------------------------------------ encoder


SLOW_ENCODERS = {"wide_resnet50_2"}  # 69 M parameters: seconds to build on a 2-core CPU


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ENCODERS else n for n in ENCODERS]
)
def test_every_table_encoder_gives_its_declared_channels_and_strides(name):
    spec = ENCODERS[name]
    encoder = build_encoder(EncoderConfig(backbone=name, weights="random"))
    assert (encoder.channels, encoder.reductions) == (spec.channels, spec.reductions)
    outputs = encoder(torch.rand(2, 3, 128, 128))
    assert len(outputs) == 4
    for out, c, r in zip(outputs, spec.channels, spec.reductions, strict=True):
        assert out.shape == (2, c, 128 // r, 128 // r)
        assert torch.isfinite(out).all()
    assert not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("name", list(ENCODERS))
def test_table_entries_name_real_torchvision_builders_and_weights(name):
    import torchvision

    spec = ENCODERS[name]
    assert spec.torchvision_name in torchvision.models.list_models()
    if spec.download is not None:  # resolving the enum downloads nothing
        assert torchvision.models.get_weight(spec.download).meta["num_params"] > 0


def test_encoder_stays_in_eval_mode_and_frozen():
    encoder = build_encoder(EncoderConfig(backbone="resnet18", weights="random", fold_batchnorm=False))
    encoder.train()
    assert not encoder.training
    assert all(not m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())


def test_normalisation_lives_in_the_model_as_non_persistent_buffers():
    encoder = build_encoder(EncoderConfig(backbone="mobilenet_v2", weights="random", input_norm="tf"))
    assert torch.allclose(encoder.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert "mean" not in encoder.state_dict()


def _has_tf_padding(encoder: torch.nn.Module) -> bool:
    return any(isinstance(m, Conv2dTFSame) for m in encoder.modules())


@pytest.mark.parametrize(
    ("backbone", "input_norm", "tf_same_padding", "mean", "tf_padding"),
    [
        ("mobilenet_v2", "auto", None, 0.485, False),  # the table's torchvision entry
        ("mobilenet_v2_tf", "auto", None, 0.5, True),  # the table's TF-converted entry
        ("mobilenet_v2", "tf", True, 0.5, True),  # explicit values override the table
        ("mobilenet_v2_tf", "imagenet", False, 0.485, False),
        ("resnet18", "auto", True, 0.485, True),
    ],
)
def test_auto_takes_the_table_entry_and_explicit_values_override_it(
    backbone, input_norm, tf_same_padding, mean, tf_padding
):
    config = EncoderConfig(backbone=backbone, weights="random", input_norm=input_norm, tf_same_padding=tf_same_padding)
    encoder = build_encoder(config)
    assert encoder.mean.flatten()[0].item() == pytest.approx(mean)
    assert _has_tf_padding(encoder) == tf_padding


def test_batchnorm_folding_keeps_the_maps():
    torch.manual_seed(0)
    plain = build_encoder(EncoderConfig(backbone="mobilenet_v2", weights="random", fold_batchnorm=False))
    for m in plain.modules():  # give BatchNorm non-trivial statistics so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folded = build_encoder(EncoderConfig(backbone="mobilenet_v2", weights="random", fold_batchnorm=False))
    folded.load_state_dict(plain.state_dict())
    from prnad.model.encoder import fold_batchnorm

    fold_batchnorm(folded.stages)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(plain(x), folded(x), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_tf_same_padding_pads_bottom_right_only():
    conv = Conv2dTFSame(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)
    assert conv(x).shape == (1, 1, 2, 2)


def test_weights_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        build_encoder(EncoderConfig(backbone="resnet18", weights=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*expected keys missing"):
        build_encoder(EncoderConfig(backbone="resnet18", weights=str(wrong)))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        build_encoder(EncoderConfig(backbone="resnet18", weights=str(garbage)))
    for path in (tmp_path / "missing.pth", wrong, garbage):  # the early check, before any data is read
        with pytest.raises(CheckpointError, match=path.name):
            check_weights_source(EncoderConfig(backbone="resnet18", weights=str(path)))


def _weights_file(path, backbone: str, *, folded: bool) -> str:
    """A random torchvision classifier saved to ``path``; BatchNorm statistics at 0 / 1 as TFLite leaves them
    (``folded``), else random as after training in PyTorch."""
    import torchvision

    torch.manual_seed(3)
    model = torchvision.models.get_model(backbone)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and folded:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), path)
    return str(path)


def test_local_weights_file_is_loaded(tmp_path):
    path = _weights_file(tmp_path / "r18.pth", "resnet18", folded=False)
    encoder = build_encoder(EncoderConfig(backbone="resnet18", weights=path, fold_batchnorm=False))
    assert torch.equal(encoder.stages[0][0].weight, torch.load(path)["conv1.weight"])


def test_tf_converted_file_with_auto_norm_is_refused_naming_the_file_and_the_ways_out(tmp_path):
    path = _weights_file(tmp_path / "tf_like.pth", "mobilenet_v2", folded=True)
    for config in (
        EncoderConfig(backbone="mobilenet_v2", weights=path),
        EncoderConfig(backbone="mobilenet_v2", weights=path, input_norm="tf"),  # padding still left to the table
    ):
        for check in (build_encoder, check_weights_source):
            with pytest.raises(CheckpointError, match=r"tf_like\.pth: every BatchNorm has running_mean exactly 0") as e:
                check(config)
            assert "--backbone mobilenet_v2_tf" in str(e.value)
            assert "model.encoder.input_norm and model.encoder.tf_same_padding explicitly" in str(e.value)


def test_tf_converted_file_runs_as_the_tf_entry_or_with_explicit_settings(tmp_path):
    path = _weights_file(tmp_path / "tf_like.pth", "mobilenet_v2", folded=True)
    as_entry = build_encoder(EncoderConfig(backbone="mobilenet_v2_tf", weights=path))
    explicit = build_encoder(
        EncoderConfig(backbone="mobilenet_v2", weights=path, input_norm="tf", tf_same_padding=True)
    )
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(as_entry(x), explicit(x), strict=True):
        assert torch.equal(a, b)
    assert _has_tf_padding(as_entry)
    check_weights_source(EncoderConfig(backbone="mobilenet_v2_tf", weights=path))


def test_pytorch_trained_file_is_refused_by_the_tf_entry(tmp_path):
    path = _weights_file(tmp_path / "torch_like.pth", "mobilenet_v2", folded=False)
    with pytest.raises(CheckpointError, match=r"torch_like\.pth: its BatchNorms hold trained") as e:
        build_encoder(EncoderConfig(backbone="mobilenet_v2_tf", weights=path))
    assert "--backbone mobilenet_v2 " in str(e.value)
    build_encoder(EncoderConfig(backbone="mobilenet_v2", weights=path))
    build_encoder(EncoderConfig(backbone="mobilenet_v2_tf", weights=path, input_norm="tf", tf_same_padding=True))


def test_old_checkpoint_config_with_explicit_tf_settings_still_loads(tmp_path):
    from prnad.checkpoint import load_checkpoint, save_checkpoint

    old = {"backbone": "mobilenet_v2", "weights": "random", "input_norm": "tf", "tf_same_padding": True}
    # the defaults of then
    spec = {"prototype_match": "map", "score_bank_size": 0, "head_scales": [0, 1, 2], "msa_scales": [0, 1, 2]}
    config = from_dict(RunConfig, {"model": {"encoder": old, "decoder_channels": [16, 16, 8], **spec}})
    encoder = build_encoder(config.model.encoder)
    shapes = zip(encoder.channels[:3], encoder.reductions[:3], strict=True)
    prototypes = [torch.randn(2, c, 64 // r, 64 // r) for c, r in shapes]
    model = build_prn(config.model, prototypes=prototypes, encoder=encoder).eval()
    path = save_checkpoint(tmp_path / "old.safetensors", model=model, config=config, iteration=1)
    loaded = load_checkpoint(path)
    assert to_dict(loaded.config)["model"]["encoder"] == {**old, "fold_batchnorm": True}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x).logits, model(x).logits)
    assert _has_tf_padding(loaded.model.encoder)


def test_a_checkpoint_from_before_patch_matching_and_score_banks_loads_as_it_was_made(tmp_path):
    """Its stored config has none of model.prototype_match, score_bank_size, head_scales, msa_scales: it was
    made with whole-map prototypes, no banks and the full head (the defaults of then), not today's."""
    import json

    from safetensors.torch import load_file, save_file

    from prnad.checkpoint import load_checkpoint, save_checkpoint

    model = _model()  # map, no banks
    config = from_dict(
        RunConfig,
        {
            "model": {
                "encoder": {"backbone": "resnet18", "weights": "random"},
                "decoder_channels": [16, 16, 8],
                "prototype_match": "map",
                "score_bank_size": 0,
                "head_scales": [0, 1, 2],
                "msa_scales": [0, 1, 2],
            }
        },
    )
    path = save_checkpoint(tmp_path / "new.safetensors", model=model.eval(), config=config, iteration=1)
    with safe_open(path, "pt") as f:
        header = f.metadata()
    stored = json.loads(header["config"])
    for key in ("prototype_match", "score_bank_size", "head_scales", "msa_scales"):
        del stored["model"][key]
    old = tmp_path / "old.safetensors"
    save_file(load_file(path), old, metadata={**header, "config": json.dumps(stored)})
    loaded = load_checkpoint(old)
    assert loaded.config.model.prototype_match == "map" and loaded.config.model.score_bank_size == 0
    assert loaded.config.model.head_scales == (0, 1, 2) and loaded.config.model.msa_scales == (0, 1, 2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x).logits, model(x).logits)


# ------------------------------------------------------------------------------------------------ prototypes


def test_prototype_count():
    assert prototype_count(209, 0.1) == 21
    assert prototype_count(5, 0.1) == 1
    assert prototype_count(40, 1.0) == 40


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 40, generator=g) * 10
    points = torch.cat([centres[i] + 0.1 * torch.randn(15, 40, generator=g) for i in range(3)])
    found = kmeans(points, 3, restarts=2, iterations=20, generator=torch.Generator().manual_seed(1))
    means = torch.stack([points[15 * i : 15 * (i + 1)].mean(0) for i in range(3)])
    assert torch.cdist(found, means).min(1).values.max() < 1e-4


def test_kmeans_matches_plain_lloyd_inertia_on_random_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=g)
    centres = kmeans(x, 4, restarts=3, iterations=100, generator=torch.Generator().manual_seed(0))
    assign = torch.cdist(x, centres).argmin(1)
    # a Lloyd fixed point: every centre is the mean of the points nearest to it
    for k in range(4):
        torch.testing.assert_close(centres[k], x[assign == k].mean(0), atol=1e-5, rtol=1e-5)


def test_kmeans_with_k_equal_n_keeps_every_map():
    x = torch.randn(5, 3)
    assert torch.equal(kmeans(x, 5, restarts=1, iterations=1, generator=torch.Generator()), x)


def test_kmeans_is_seeded():
    x = torch.randn(40, 6)
    a = kmeans(x, 5, restarts=2, iterations=10, generator=torch.Generator().manual_seed(7))
    b = kmeans(x, 5, restarts=2, iterations=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_nearest_prototype_and_residual_kinds():
    protos = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 10.0)])  # (K=2, C=1, 2, 2)
    f = torch.full((1, 1, 2, 2), 9.0)
    nearest = nearest_prototype(f, protos)
    assert torch.equal(nearest, protos[1:2])
    assert torch.equal(residual(f, nearest, "squared"), torch.ones(1, 1, 2, 2))
    assert torch.equal(residual(f, nearest, "signed"), -torch.ones(1, 1, 2, 2))
    assert torch.equal(residual(f, nearest, "absolute"), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="cubed"):
        residual(f, nearest, "cubed")


# ------------------------------------------------------------------------------------------------ MF, MSA, decoder


def test_multiscale_fusion_shapes_and_exchange():
    mf = MultiScaleFusion(channels=(8, 16, 32)).eval()
    maps = _maps(2, (8, 16, 32))
    out = mf(maps)
    assert [o.shape for o in out] == [m.shape for m in maps]
    # every scale receives every other scale: changing the coarsest input changes the finest output
    changed = [maps[0], maps[1], maps[2] + 1.0]
    assert not torch.allclose(mf(changed)[0], out[0])
    with pytest.raises(ValueError, match="expected 3 maps"):
        mf(maps[:2])


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 8, 6)  # (B, H, W, D)
    for grid in (1, 2, 4):
        parts = _partition(x, grid, heads=3)
        assert parts.shape == (2 * grid * grid, 3, (8 // grid) ** 2, 2)
        assert torch.equal(_merge(parts, 2, grid, (8, 8)), x)


def test_window_attention_stays_inside_windows():
    q = torch.randn(1, 8, 8, 4)
    kv = torch.randn(1, 8, 8, 8)
    out = window_attention(q, kv, grid=2, heads=1)
    kv2 = kv.clone()
    kv2[:, 4:, 4:] += 5.0  # change only the bottom-right window's keys/values
    out2 = window_attention(q, kv2, grid=2, heads=1)
    assert torch.equal(out[:, :4, :4], out2[:, :4, :4])
    assert not torch.allclose(out[:, 4:, 4:], out2[:, 4:, 4:])


def test_window_attention_reads_pooled_keys():
    q = torch.randn(1, 8, 8, 4)
    kv = torch.randn(1, 8, 8, 8)
    pooled = F.avg_pool2d(kv.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # (1, 4, 4, 8)
    k, v = pooled.chunk(2, dim=-1)
    expected = F.scaled_dot_product_attention(q.reshape(1, 1, 64, 4), k.reshape(1, 1, 16, 4), v.reshape(1, 1, 16, 4))
    got = window_attention(q, pooled, grid=1, heads=1)
    torch.testing.assert_close(got.reshape(1, 1, 64, 4), expected)
    assert pooled_size((8, 8), 1, 4) == (4, 4) and pooled_size((8, 8), 2, 4) == (8, 8)
    assert pooled_size((16, 16), 4, 2) == (8, 8)


def _msa_block_projecting_every_location(block: MSABlock, x: torch.Tensor) -> torch.Tensor:
    """MSABlock's forward as first written: keys and values projected at every location, then pooled."""
    x = x + block.position(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    qkv = block.qkv(block.norm(x))
    d = x.shape[-1]
    q, kv = qkv[..., :d], qkv[..., d:]
    branches = []
    for g in block.grids:
        side = pooled_size(x.shape[1:3], g, block.max_kv)
        pooled = F.adaptive_avg_pool2d(kv.permute(0, 3, 1, 2), side).permute(0, 2, 3, 1)
        branches.append(window_attention(q, pooled, grid=g, heads=block.heads))
    return x + block.merge(torch.cat(branches, dim=-1))


@pytest.mark.parametrize("grids", [(1,), (1, 2), (1, 2, 4)])
def test_msa_block_pools_before_projecting_to_the_same_result(grids):
    """Where every branch pools its keys the block pools the normalised map first and projects the fewer
    vectors (pooling and an affine map commute); otherwise it projects every location once. Either way the
    result is the block's as first written, projection then pooling."""
    torch.manual_seed(0)
    block = MSABlock(channels=8, grids=grids, heads=2, max_kv=2).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _msa_block_projecting_every_location(block, x), rtol=1e-5, atol=1e-5)


def test_msa_block_and_stack_shapes():
    block = MSABlock(channels=8, grids=(1, 2, 4), heads=2, max_kv=2)
    assert block(torch.randn(2, 8, 8, 8)).shape == (2, 8, 8, 8)
    stack = MSAStack(channels=12, blocks=2, grids=(1, 2, 4), head_dim=64, max_kv=4)
    x = torch.randn(2, 12, 16, 16)
    assert stack(x).shape == x.shape
    assert torch.equal(MSAStack(channels=12, blocks=0, grids=(1,), head_dim=4, max_kv=4)(x), x)
    with pytest.raises(ValueError, match="grid"):
        window_attention(torch.randn(1, 6, 6, 4), torch.randn(1, 6, 6, 8), grid=4, heads=1)
    with pytest.raises(ValueError, match="grid"):
        pooled_size((6, 6), 4, 8)


def test_decoder_shapes():
    dec = Decoder(bottom_channels=32, skip_channels=(8, 16, 24), channels=(16, 8, 8))
    skips = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 24, 4, 4)]
    out = dec(torch.randn(2, 32, 2, 2), skips, (64, 64))
    assert out.shape == (2, 1, 64, 64)


# ------------------------------------------------------------------------------------------------ PRN, loss, score


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_prn_forward_shapes(backbone):
    model = _model(backbone).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.logits.shape == out.anomaly_map.shape == (2, 1, 64, 64)
    assert out.score.shape == (2,)
    assert ((out.anomaly_map >= 0) & (out.anomaly_map <= 1)).all()
    with pytest.raises(ValueError, match=r"\(2, 1, 64, 64\)"):
        model(torch.rand(2, 1, 64, 64))


def test_topk_score_is_the_mean_of_the_largest_pixels():
    logits = torch.full((1, 1, 4, 4), -40.0)
    logits[0, 0, 0, :3] = torch.tensor([2.0, 0.0, -1.0])
    top = torch.sigmoid(torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(topk_score(logits, 2), top[:2].mean().view(1))
    torch.testing.assert_close(topk_score(logits, 100), torch.sigmoid(logits.double()).mean().view(1))


def test_focal_and_total_loss_by_hand():
    logits = torch.tensor([0.0, 0.0]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    # p = 0.5 everywhere: focal = alpha * 0.5^gamma * ln 2 for both pixels
    expected_focal = 0.5 * 0.5**4 * torch.log(torch.tensor(2.0))
    assert torch.allclose(focal_loss(logits, target, alpha=0.5, gamma=4.0), expected_focal)
    # SmoothL1 with |p - m| = 0.5 < beta = 1: 0.5 * 0.25 = 0.125
    total = prn_loss(logits, target, LossConfig())
    assert torch.allclose(total, 0.125 + 5.0 * expected_focal)
    with pytest.raises(ValueError, match="differ in shape"):
        prn_loss(logits, target.view(1, 1, 2, 1), LossConfig())


def _frozen_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


@pytest.mark.parametrize("fold", [False, True])
def test_training_step_leaves_encoder_weights_and_bn_buffers_unchanged(fold):
    torch.manual_seed(0)
    config = ModelConfig(
        encoder=EncoderConfig(backbone="resnet18", weights="random", fold_batchnorm=fold),
        decoder_channels=(16, 16, 8),
        prototype_match="map",
        score_bank_size=0,
    )
    encoder = build_encoder(config.encoder)
    protos = [
        torch.randn(2, encoder.channels[i], 64 // encoder.reductions[i], 64 // encoder.reductions[i])
        for i in config.head_scales
    ]
    model = build_prn(config, prototypes=protos, encoder=encoder)
    before = _frozen_state(model)
    assert any("running_mean" in k for k in before) != fold  # unfolded: the BN buffers are there to check
    trainable_before = [p.clone() for p in model.trainable_parameters()]
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.1)
    model.train()
    out = model(torch.rand(4, 3, 64, 64))
    prn_loss(out.logits, (torch.rand(4, 1, 64, 64) > 0.8).float(), LossConfig()).backward()
    optimizer.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.encoder.training
    assert any(not torch.equal(a, b) for a, b in zip(trainable_before, model.trainable_parameters(), strict=True))
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    assert not encoder_ids & {id(p) for p in model.trainable_parameters()}


def test_fused_for_inference_gives_the_same_maps():
    model = _model()
    model.train()
    model(torch.rand(4, 3, 64, 64))  # move BN statistics away from their initial values
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    fused = fused_for_inference(model)
    torch.testing.assert_close(fused(x).anomaly_map, model(x).anomaly_map, atol=1e-5, rtol=1e-4)


def test_per_location_matching_takes_the_nearest_prototype_at_each_location():
    from prnad.model.prototypes import nearest_prototype_per_location

    g = torch.Generator().manual_seed(0)
    protos = torch.randn(5, 3, 4, 6, generator=g)  # (K, C, H, W)
    feats = torch.randn(2, 3, 4, 6, generator=g)  # (B, C, H, W)
    chosen = nearest_prototype_per_location(feats, protos)
    for b in range(2):
        for h in range(4):
            for w in range(6):
                dists = ((protos[:, :, h, w] - feats[b, :, h, w]) ** 2).sum(1)  # (K,)
                assert torch.equal(chosen[b, :, h, w], protos[int(dists.argmin()), :, h, w])
    # a map that equals one prototype here and another one there matches both exactly
    mixed = protos[0].clone()
    mixed[:, :, 3:] = protos[4][:, :, 3:]
    assert torch.equal(nearest_prototype_per_location(mixed[None], protos)[0], mixed)


def test_smoothed_score_follows_regions_not_single_pixels():
    spot = torch.full((1, 1, 32, 32), -10.0)
    spot[0, 0, 5, 5] = 10.0  # one strong pixel
    blob = torch.full((1, 1, 32, 32), -10.0)
    blob[0, 0, 10:16, 10:16] = 2.0  # a weaker region
    assert topk_score(spot, 1) > topk_score(blob, 1)
    assert topk_score(spot, 1, smoothing=2.0) < topk_score(blob, 1, smoothing=2.0)
    flat = torch.zeros(1, 1, 16, 16)
    torch.testing.assert_close(topk_score(flat, 10, smoothing=3.0), torch.full((1,), 0.5, dtype=torch.float64))


def test_prn_with_per_location_matching_and_a_smoothed_score():
    plain = _model().eval()
    variant = _model(prototype_match="location", score_smoothing=4.0).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), variant(x)
    assert b.logits.shape == (2, 1, 64, 64) and b.score.shape == (2,) and torch.isfinite(b.logits).all()
    assert not torch.equal(a.logits, b.logits)  # same weights (seed 0), other residuals
    with pytest.raises(ConfigError, match="model.prototype_match"):
        ModelConfig(prototype_match="nearest")


def test_msa_only_at_the_scales_asked_for():
    model = _model(msa_scales=(1, 2)).eval()
    assert [len(stack.blocks) for stack in model.attention] == [0, 2, 2]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.logits.shape == (1, 1, 64, 64) and torch.isfinite(out.logits).all()
    with pytest.raises(ConfigError, match="model.msa_scales"):
        ModelConfig(msa_scales=(0, 3))
