import ast
import typing
from pathlib import Path

import pytest

from prnad.config import EncoderConfig, RunConfig, build_config, from_dict, load_yaml, to_dict
from prnad.encoders import INPUT_NORMS
from prnad.errors import ConfigError


def test_defaults_follow_the_spec():
    config = RunConfig()
    assert config.model.prototype_ratio == 0.1
    assert config.model.topk == 100
    assert config.data.image_size == 256
    assert config.data.seen_anomalies == 10
    assert (config.loss.focal_weight, config.loss.focal_gamma, config.loss.focal_alpha) == (5.0, 4.0, 0.5)
    assert config.model.msa_grids == (1, 2, 4)


def test_unknown_key_is_rejected_with_its_full_name():
    with pytest.raises(ConfigError, match=r"train\.iteratons"):
        build_config({"train": {"iteratons": 5}})


def test_unknown_top_level_section_is_rejected():
    with pytest.raises(ConfigError, match="trian"):
        build_config({"trian": {}})


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"train": {"iterations": 0}}, "train.iterations"),
        ({"data": {"image_size": 100}}, "data.image_size"),
        ({"model": {"prototype_ratio": 0.0}}, "model.prototype_ratio"),
        ({"model": {"encoder": {"backbone": "vgg"}}}, "model.encoder.backbone"),
        ({"synth": {"ea_opacity": [0.6, 0.2]}}, "synth.ea_opacity"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"data": {"seen_anomalies": True}}, "data.seen_anomalies"),
        ({"model": {"encoder": {"input_norm": "caffe"}}}, "model.encoder.input_norm"),
        ({"model": {"encoder": {"tf_same_padding": "yes"}}}, "model.encoder.tf_same_padding"),
    ],
)
def test_bad_values_raise_naming_the_key(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(values)


def test_layers_override_in_order():
    config = build_config({"train": {"seed": 1, "lr": 0.1}}, {"train": {"seed": 2}})
    assert (config.train.seed, config.train.lr) == (2, 0.1)


def test_round_trip_through_dict():
    config = build_config({"model": {"msa_grids": [1, 4]}, "data": {"root": "x"}})
    assert from_dict(RunConfig, to_dict(config)) == config
    assert config.model.msa_grids == (1, 4)


def test_yaml_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_yaml(listing)


def test_repository_configs_load():
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "configs").glob("*.yaml")):
        build_config(load_yaml(path))


# ------------------------------------------------------------------------------------------------ encoder


def test_input_norm_choices_are_auto_and_the_tables_norms():
    hints = typing.get_type_hints(EncoderConfig)
    assert typing.get_args(hints["input_norm"]) == ("auto", *INPUT_NORMS)


def test_encoder_defaults_leave_normalisation_and_padding_to_the_table():
    config = EncoderConfig()
    assert (config.backbone, config.weights, config.input_norm, config.tf_same_padding) == (
        "resnet18",
        "imagenet",
        "auto",
        None,
    )


def test_the_tf_entry_has_no_download_and_says_to_pass_the_file():
    with pytest.raises(ConfigError, match=r"model\.encoder\.weights.*mobilenet_v2_tf.*--backbone-weights PATH"):
        build_config({"model": {"encoder": {"backbone": "mobilenet_v2_tf"}}})
    build_config({"model": {"encoder": {"backbone": "mobilenet_v2_tf", "weights": "some.pth"}}})


def test_old_checkpoint_encoder_configs_still_load_and_round_trip():
    old = {"backbone": "mobilenet_v2", "weights": "x.pth", "input_norm": "tf", "tf_same_padding": True}
    config = build_config({"model": {"encoder": old}})
    assert (config.model.encoder.input_norm, config.model.encoder.tf_same_padding) == ("tf", True)
    assert from_dict(RunConfig, to_dict(config)) == config
    auto = build_config({"model": {"encoder": {"tf_same_padding": None}}})
    assert to_dict(auto)["model"]["encoder"]["tf_same_padding"] is None
    assert from_dict(RunConfig, to_dict(auto)) == auto


def test_config_and_the_encoder_table_import_nothing_under_prnad_model():
    """prnad.model imports prnad.config, so config (and the table it validates against) must not import back;
    the table names torchvision builders instead of importing torch, so it stays cheap to import."""
    src = Path(__file__).resolve().parents[1] / "src" / "prnad"
    for name in ("config.py", "encoders.py"):
        tree = ast.parse((src / name).read_text())
        imported = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
        heavy = [m for m in imported if m.split(".")[0] in ("torch", "torchvision") or m.startswith("prnad.model")]
        assert heavy == [], f"{name} imports {heavy} at module level"
