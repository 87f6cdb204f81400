from pathlib import Path

import pytest

from prnad.config import RunConfig, build_config, from_dict, load_yaml, to_dict
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
