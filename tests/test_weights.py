"""The real MobileNetV2 ImageNet weights of ../shared/weights, when present: TF padding and [-1, 1] input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prnad.config import EncoderConfig
from prnad.model.encoder import INPUT_NORMS, build_classifier, build_encoder
from tests.conftest import SHARED

WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
CAT = SHARED / "weights" / "check" / "cat.bmp"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="MobileNetV2 weights not present")


def _classify(config: EncoderConfig) -> torch.Tensor:
    """Centre crop 87.5 %, bilinear resize to 224, the weights' normalisation; returns softmax (1000,)."""
    image = Image.open(CAT).convert("RGB")
    w, h = image.size
    side = int(min(w, h) * 0.875)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]  # (1, 3, 224, 224)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in INPUT_NORMS[config.input_norm])
    with torch.no_grad():
        return build_classifier(config)((x - mean) / std).softmax(1)[0]


def test_mobilenet_v2_classifies_the_cat_as_egyptian_cat():
    probs = _classify(
        EncoderConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), input_norm="tf", tf_same_padding=True)
    )
    assert int(probs.argmax()) == 285
    assert float(probs[285]) > 0.5


def test_encoder_from_the_real_weights_has_the_documented_taps():
    encoder = build_encoder(
        EncoderConfig(backbone="mobilenet_v2", weights=str(WEIGHTS), input_norm="tf", tf_same_padding=True)
    )
    maps = encoder(torch.rand(1, 3, 256, 256))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 64, 64), (32, 32, 32), (96, 16, 16), (320, 8, 8)]
