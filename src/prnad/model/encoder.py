"""The frozen, pretrained encoder: multi-scale feature maps at strides 4, 8, 16 and 32.

Shape letters: B batch, C channels, H/W height/width, S image side.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models

from prnad.config import EncoderConfig
from prnad.errors import CheckpointError

# Input normalisation belongs to the weights: torchvision's ImageNet weights expect ImageNet mean/std,
# TensorFlow-trained weights (../shared/weights) expect [-1, 1].
INPUT_NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# torchvision constructor, its ImageNet weights enum, and the slices that end at strides 4, 8, 16, 32.
_RESNET_TAPS = ("layer1", "layer2", "layer3", "layer4")
_MOBILENET_TAPS = ((0, 4), (4, 7), (7, 14), (14, 18))


class Conv2dTFSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: for stride 2 and even input, 0 before and 1 after.

    Keeps nn.Conv2d's parameter names, so state dicts load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1], strict=True
        ):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _to_tf_same(module: nn.Module) -> None:
    """Replace every strided Conv2d below ``module`` by :class:`Conv2dTFSame` (same parameters)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1:
            same = Conv2dTFSame(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                padding=0,
                dilation=child.dilation,
                groups=child.groups,
                bias=child.bias is not None,
            )
            same.load_state_dict(child.state_dict())
            setattr(module, name, same)
        else:
            _to_tf_same(child)


def fold_batchnorm(module: nn.Module) -> None:
    """Fold every BatchNorm2d that directly follows a Conv2d (in registration order) into that conv.

    Valid because the encoder is frozen and always in eval mode: BN is then a fixed affine map. Saves a
    pass over every feature map (about 5 ms per image for MobileNetV2 on a 2-core CPU).
    """
    children = list(module.named_children())
    for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
            setattr(module, bn_name, nn.Identity())
    for _, child in module.named_children():
        fold_batchnorm(child)


def _torchvision_model(backbone: str, weights: str) -> nn.Module:
    """The full torchvision classifier, with ImageNet weights downloaded when ``weights == "imagenet"``."""
    constructors = {
        "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
        "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
        "mobilenet_v2": (models.mobilenet_v2, models.MobileNet_V2_Weights.IMAGENET1K_V1),
    }
    constructor, imagenet = constructors[backbone]
    if weights == "imagenet":
        try:
            return constructor(weights=imagenet)
        except Exception as exc:  # no network, blocked hub, corrupt cache
            raise CheckpointError(
                f"cannot download {backbone} ImageNet weights ({exc}); offline, pass --backbone-weights PATH "
                "to a local state-dict file"
            ) from exc
    model = constructor(weights=None)
    if weights != "random":
        load_state_dict_file(model, Path(weights))
    return model


def check_weights_source(config: EncoderConfig) -> None:
    """Fail early (before any data is read) when the weights are a file that is not there."""
    if config.weights not in ("imagenet", "random") and not Path(config.weights).is_file():
        raise CheckpointError(f"{config.weights}: encoder weights file not found (expected imagenet, random or a file)")


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load a state dict (``.pth``/``.pt`` or ``.safetensors``) strictly, with errors naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read encoder weights ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (a {type(state).__name__})")
    load_strict(model, state, path, what=f"{type(model).__name__} weights")


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, *, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with an error naming the file and a few wrong keys."""
    expected, got = set(model.state_dict()), set(state)
    if got != expected:
        missing, unexpected = sorted(expected - got), sorted(got - expected)
        raise CheckpointError(
            f"{path}: does not hold {what}: {len(missing)} expected keys missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # same keys, other shapes
        raise CheckpointError(f"{path}: does not hold {what}: {exc}") from exc


def _stages(backbone: str, model: nn.Module) -> nn.ModuleList:
    """Split a classifier into four sequential stages ending at strides 4, 8, 16, 32."""
    if backbone == "mobilenet_v2":
        return nn.ModuleList(model.features[a:b] for a, b in _MOBILENET_TAPS)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    return nn.ModuleList([stem, model.layer2, model.layer3, model.layer4])


class Encoder(nn.Module):
    """Frozen feature extractor; always in eval mode, so BatchNorm statistics never drift.

    Input: RGB in [0, 1], (B, 3, S, S). Output: four maps (B, C_i, S/r_i, S/r_i) with r = 4, 8, 16, 32.
    The first three are PRN's scales; the last feeds the decoder's bottom.
    """

    def __init__(self, *, stages: nn.ModuleList, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.stages = stages
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.channels = self._probe_channels()
        self.reductions = (4, 8, 16, 32)

    def train(self, mode: bool = True) -> Encoder:
        """Stay in eval mode whatever the caller asks: the encoder is frozen."""
        return super().train(False)

    def _probe_channels(self) -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(f.shape[1] for f in self(torch.zeros(1, 3, 64, 64)))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def build_encoder(config: EncoderConfig) -> Encoder:
    """Build the frozen encoder that ``config`` describes (weights loaded, normalisation set)."""
    model = _torchvision_model(config.backbone, config.weights)
    if config.tf_same_padding:
        _to_tf_same(model)
    stages = _stages(config.backbone, model)
    if config.fold_batchnorm:
        fold_batchnorm(stages)
    mean, std = INPUT_NORMS[config.input_norm]
    return Encoder(stages=stages, mean=mean, std=std)


def build_classifier(config: EncoderConfig) -> nn.Module:
    """The whole torchvision classifier with the encoder's weights and padding (used to verify weights)."""
    model = _torchvision_model(config.backbone, config.weights)
    if config.tf_same_padding:
        _to_tf_same(model)
    return model.eval()
