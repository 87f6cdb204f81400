"""The real MobileNetV2 ImageNet weights of ../shared/weights, when present: the mobilenet_v2_tf entry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prnad.config import EncoderConfig, build_config, load_yaml
from prnad.errors import CheckpointError
from prnad.model.encoder import build_classifier, build_encoder, check_weights_source
from tests.conftest import SHARED

WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
CAT = SHARED / "weights" / "check" / "cat.bmp"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="MobileNetV2 weights not present")


def _classify(config: EncoderConfig) -> torch.Tensor:
    """Centre crop 87.5 %, bilinear resize to 224; returns softmax (1000,). The classifier normalises."""
    image = Image.open(CAT).convert("RGB")
    w, h = image.size
    side = int(min(w, h) * 0.875)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]  # (1, 3, 224, 224) in [0, 1]
    with torch.no_grad():
        return build_classifier(config)(x).softmax(1)[0]


def test_mobilenet_v2_tf_classifies_the_cat_as_egyptian_cat():
    probs = _classify(EncoderConfig(backbone="mobilenet_v2_tf", weights=str(WEIGHTS)))
    assert int(probs.argmax()) == 285
    assert float(probs[285]) > 0.5


def test_old_explicit_settings_give_the_same_classifier():
    old = EncoderConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), input_norm="tf", tf_same_padding=True)
    new = EncoderConfig(backbone="mobilenet_v2_tf", weights=str(WEIGHTS))
    assert torch.equal(_classify(old), _classify(new))


def test_the_tf_file_under_mobilenet_v2_with_auto_norm_is_refused_naming_the_file():
    config = EncoderConfig(backbone="mobilenet_v2", weights=str(WEIGHTS))
    for check in (build_encoder, check_weights_source):
        with pytest.raises(CheckpointError, match="mobilenet_v2_imagenet.pth: every BatchNorm") as e:
            check(config)
        assert "--backbone mobilenet_v2_tf" in str(e.value)


def test_encoder_from_the_real_weights_has_the_documented_taps():
    encoder = build_encoder(EncoderConfig(backbone="mobilenet_v2_tf", weights=str(WEIGHTS)))
    maps = encoder(torch.rand(1, 3, 256, 256))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 64, 64), (32, 32, 32), (96, 16, 16), (320, 8, 8)]


def test_repository_config_uses_the_tf_entry():
    config = build_config(load_yaml(REPO / "configs" / "mobilenet_v2_tf.yaml")).model.encoder
    assert (config.backbone, config.input_norm, config.tf_same_padding) == ("mobilenet_v2_tf", "auto", None)
    weights = REPO / config.weights  # relative to the repository root, where the README's commands run
    assert weights.resolve() == WEIGHTS.resolve()
    check_weights_source(replace(config, weights=str(weights)))
