"""The table of encoders: one entry per encoder, holding everything that belongs to it and its weights.

Like timm's ``default_cfgs`` / ``PretrainedCfg``: the torchvision architecture, how it is cut into the four
stages PRN taps (strides 4, 8, 16, 32), the channels each stage gives, and what its weights need (input
normalisation, TensorFlow "SAME" padding) and where they come from. Adding an encoder means adding one entry.

This module imports neither torch nor torchvision at module level (builders and weights are named, and
resolved by ``prnad.model.encoder``): ``prnad.config`` validates backbone names against it, and
``prnad.model`` imports ``prnad.config``, so nothing here may reach back into ``prnad.model``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

# Input normalisation (mean, std) on RGB in [0, 1]: torchvision's ImageNet weights expect ImageNet mean/std,
# TensorFlow-trained weights expect [-1, 1].
INPUT_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder: architecture, the cut into four stages, and what its weights need.

    ``cut`` receives the torchvision classifier and returns its four stages (modules applied in sequence);
    stage ``i`` outputs ``channels[i]`` channels at stride ``reductions[i]``. ``batchnorm_folded`` is the
    signature of the weights: True when every BatchNorm has running_mean 0 and running_var 1 (TFLite folds
    BatchNorm into the convs), False for weights trained in PyTorch; a weights file is checked against it.
    """

    name: str
    torchvision_name: str  # builder name for torchvision.models.get_model
    cut: Callable[[nn.Module], list[nn.Module]]
    channels: tuple[int, int, int, int]
    input_norm: Literal["imagenet", "tf"]  # key of INPUT_NORMS
    tf_same_padding: bool
    batchnorm_folded: bool
    download: str | None  # torchvision weights enum ("ResNet18_Weights.IMAGENET1K_V1"); None: a local file only
    weights_source: str  # one line: where the weights come from
    reductions: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __post_init__(self) -> None:
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"encoder {self.name}: input_norm must be one of {sorted(INPUT_NORMS)}")
        if len(self.channels) != 4 or len(self.reductions) != 4:
            raise ValueError(f"encoder {self.name}: expected 4 channels and 4 reductions")


def _resnet_stages(model: nn.Module) -> list[nn.Module]:
    """Stem + layer1 (stride 4), layer2 (8), layer3 (16), layer4 (32)."""
    from torch import nn  # torch is loaded once a model exists; importing here keeps this module torch-free

    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    return [stem, model.layer2, model.layer3, model.layer4]


def _mobilenet_v2_stages(model: nn.Module) -> list[nn.Module]:
    """``features[:4]`` (stride 4), ``[4:7]`` (8), ``[7:14]`` (16), ``[14:18]`` (32)."""
    return [model.features[a:b] for a, b in ((0, 4), (4, 7), (7, 14), (14, 18))]


_TABLE = (
    EncoderSpec(
        name="resnet18",
        torchvision_name="resnet18",
        cut=_resnet_stages,
        channels=(64, 128, 256, 512),
        input_norm="imagenet",
        tf_same_padding=False,
        batchnorm_folded=False,
        download="ResNet18_Weights.IMAGENET1K_V1",
        weights_source="torchvision ResNet18_Weights.IMAGENET1K_V1, downloaded to the torch cache",
    ),
    EncoderSpec(
        name="wide_resnet50_2",
        torchvision_name="wide_resnet50_2",
        cut=_resnet_stages,
        channels=(256, 512, 1024, 2048),
        input_norm="imagenet",
        tf_same_padding=False,
        batchnorm_folded=False,
        download="Wide_ResNet50_2_Weights.IMAGENET1K_V1",
        weights_source="torchvision Wide_ResNet50_2_Weights.IMAGENET1K_V1, downloaded to the torch cache",
    ),
    EncoderSpec(
        name="mobilenet_v2",
        torchvision_name="mobilenet_v2",
        cut=_mobilenet_v2_stages,
        channels=(24, 32, 96, 320),
        input_norm="imagenet",
        tf_same_padding=False,
        batchnorm_folded=False,
        download="MobileNet_V2_Weights.IMAGENET1K_V1",
        weights_source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1, downloaded to the torch cache",
    ),
    EncoderSpec(
        name="mobilenet_v2_tf",
        torchvision_name="mobilenet_v2",
        cut=_mobilenet_v2_stages,
        channels=(24, 32, 96, 320),
        input_norm="tf",
        tf_same_padding=True,
        batchnorm_folded=True,
        download=None,
        weights_source=(
            "a local file only: ../shared/weights/mobilenet_v2_imagenet.pth, Google's TFLite "
            "tf2_mobilenet_v2_1.0_224_ptq (google-coral/test_data 104342d2, Apache-2.0) dequantized, sha256 "
            "55291974afbe8e2bc5db48e75f8ce4d9b0c9041db9455e0d02393605f332d6c0"
        ),
    ),
)

ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _TABLE}
