"""The frozen, pretrained encoder: multi-scale feature maps at strides 4, 8, 16 and 32.

What each encoder is (architecture, stages, channels, the normalisation and padding its weights need) lives
in the table ``prnad.encoders.ENCODERS``; this module builds it, loads and checks its weights, and resolves
the config's ``auto`` values against the table (:func:`resolve_encoder`).

Shape letters: B batch, C channels, H/W height/width, S image side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision import models

from prnad.config import EncoderConfig
from prnad.encoders import ENCODERS, INPUT_NORMS, EncoderSpec
from prnad.errors import CheckpointError


@dataclass(frozen=True)
class ResolvedEncoder:
    """An :class:`EncoderConfig` with its table entry, and ``auto`` values replaced by the entry's."""

    spec: EncoderSpec
    mean: tuple[float, float, float]  # per RGB channel, on images in [0, 1]
    std: tuple[float, float, float]
    tf_same_padding: bool


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


def _is_file(weights: str) -> bool:
    """Whether an ``EncoderConfig.weights`` value names a file (not ``imagenet`` or ``random``)."""
    return weights not in ("imagenet", "random")


def _torchvision_model(spec: EncoderSpec, weights: str) -> nn.Module:
    """The full torchvision classifier of ``spec``: downloaded weights, random ones, or a file's."""
    if weights == "imagenet":  # EncoderConfig allows it only for entries with a download
        try:
            return models.get_model(spec.torchvision_name, weights=models.get_weight(spec.download))
        except Exception as exc:  # no network, blocked hub, corrupt cache
            raise CheckpointError(
                f"cannot download {spec.name} ImageNet weights ({exc}); offline, pass --backbone-weights PATH "
                "to a local state-dict file"
            ) from exc
    model = models.get_model(spec.torchvision_name, weights=None)
    if _is_file(weights):
        load_state_dict_file(model, Path(weights))
    return model


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load a state dict (``.pth``/``.pt`` or ``.safetensors``) strictly, with errors naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found (weights are imagenet, random or a file)")
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


def batchnorm_folded(model: nn.Module) -> bool:
    """True when every BatchNorm2d has running_mean exactly 0 and running_var exactly 1.

    That is how TFLite-converted weights look (TFLite folds BatchNorm into the convs) and how untrained
    ones look; weights trained in PyTorch never do.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in norms)


def _signature_error(spec: EncoderSpec, path: str, folded: bool) -> CheckpointError:
    """The error for a weights file whose BatchNorm statistics contradict ``spec``, with the ways out."""
    seen = (
        "every BatchNorm has running_mean exactly 0 and running_var exactly 1, as in TensorFlow-converted "
        "weights (TFLite folds BatchNorm into the convs)"
        if folded
        else "its BatchNorms hold trained running statistics, as in weights trained in PyTorch"
    )
    expected = "TensorFlow-converted" if spec.batchnorm_folded else "PyTorch-trained"
    ways = [
        f"use --backbone {other.name} (model.encoder.backbone)"
        for other in ENCODERS.values()
        if other.torchvision_name == spec.torchvision_name and other.batchnorm_folded == folded
    ]
    ways.append(
        "set model.encoder.input_norm and model.encoder.tf_same_padding explicitly (--input-norm, "
        "--tf-same-padding) to run this file with them"
    )
    way_out = ", or ".join(ways)
    return CheckpointError(
        f"{path}: {seen}, but encoder {spec.name} expects {expected} weights (input_norm {spec.input_norm}, "
        f"tf_same_padding {str(spec.tf_same_padding).lower()}). {way_out[0].upper()}{way_out[1:]}."
    )


def resolve_encoder(config: EncoderConfig, classifier: nn.Module) -> ResolvedEncoder:
    """Replace ``config``'s auto values by its table entry's, after checking a weights file against the entry.

    ``classifier`` is the torchvision model with ``config.weights`` loaded. When those weights are a file and
    ``input_norm`` or ``tf_same_padding`` is left to the table, the file's BatchNorm statistics must show
    the kind of weights the entry expects (:func:`batchnorm_folded` against ``spec.batchnorm_folded``), else
    :class:`CheckpointError`: a file must not run with another normalisation unless the config says so.
    """
    spec = ENCODERS[config.backbone]
    left_to_table = config.input_norm == "auto" or config.tf_same_padding is None
    if left_to_table and _is_file(config.weights):
        folded = batchnorm_folded(classifier)
        if folded != spec.batchnorm_folded:
            raise _signature_error(spec, config.weights, folded)
    mean, std = INPUT_NORMS[spec.input_norm if config.input_norm == "auto" else config.input_norm]
    tf_same = spec.tf_same_padding if config.tf_same_padding is None else config.tf_same_padding
    return ResolvedEncoder(spec=spec, mean=mean, std=std, tf_same_padding=tf_same)


def _load(config: EncoderConfig) -> tuple[nn.Module, ResolvedEncoder]:
    """The torchvision classifier with ``config``'s weights and padding, and ``config`` resolved against it."""
    classifier = _torchvision_model(ENCODERS[config.backbone], config.weights)
    resolved = resolve_encoder(config, classifier)
    if resolved.tf_same_padding:
        _to_tf_same(classifier)
    return classifier, resolved


def check_weights_source(config: EncoderConfig) -> None:
    """Fail early (before any data is read) when the weights are a file that is missing, does not hold the
    backbone's weights, or contradicts the normalisation left to the table. Downloads are not tried here."""
    if _is_file(config.weights):
        _load(config)


class _Frozen(nn.Module):
    """Base of the frozen models: the weights' normalisation as non-persistent buffers, always in eval mode."""

    def __init__(self, *, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _freeze(self) -> None:
        """Call once the submodules are set: no gradients, eval mode."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _Frozen:
        """Stay in eval mode whatever the caller asks: BatchNorm statistics never drift."""
        return super().train(False)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> what the weights expect, same shape."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return (images - self.mean) / self.std


class Encoder(_Frozen):
    """Frozen feature extractor; always in eval mode, so BatchNorm statistics never drift.

    Input: RGB in [0, 1], (B, 3, S, S). Output: four maps (B, C_i, S/r_i, S/r_i) with C = ``channels`` and
    r = ``reductions`` (4, 8, 16, 32), as the encoder table declares them. The first three are PRN's scales;
    the last feeds the decoder's bottom.
    """

    def __init__(
        self,
        *,
        stages: nn.ModuleList,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels: tuple[int, ...],
        reductions: tuple[int, ...],
    ) -> None:
        super().__init__(mean=mean, std=std)
        if not len(stages) == len(channels) == len(reductions):
            raise ValueError(
                f"got {len(stages)} stages, {len(channels)} channels and {len(reductions)} reductions; need as many"
            )
        self.stages = stages
        self.channels = tuple(channels)
        self.reductions = tuple(reductions)
        self._freeze()

    def forward(self, images: torch.Tensor, stages: int | None = None) -> list[torch.Tensor]:
        """The maps of the first ``stages`` stages (all four by default), fine to coarse."""
        x = self._normalise(images)
        features = []
        for stage in self.stages[:stages]:  # [:None]: every stage
            x = stage(x)
            features.append(x)
        return features


class Classifier(_Frozen):
    """The whole torchvision classifier behind an encoder, with its normalisation; used to verify weights.

    Input: RGB in [0, 1], (B, 3, S, S). Output: logits (B, 1000). Frozen and in eval mode, like the encoder.
    """

    def __init__(self, *, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean=mean, std=std)
        self.model = model
        self._freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._normalise(images))


def build_encoder(config: EncoderConfig) -> Encoder:
    """Build the frozen encoder that ``config`` describes (weights loaded and checked, normalisation set)."""
    classifier, resolved = _load(config)
    stages = nn.ModuleList(resolved.spec.cut(classifier))
    if config.fold_batchnorm:
        fold_batchnorm(stages)
    return Encoder(
        stages=stages,
        mean=resolved.mean,
        std=resolved.std,
        channels=resolved.spec.channels,
        reductions=resolved.spec.reductions,
    )


def build_classifier(config: EncoderConfig) -> Classifier:
    """The whole classifier with the encoder's weights, padding and normalisation (used to verify weights)."""
    classifier, resolved = _load(config)
    return Classifier(model=classifier, mean=resolved.mean, std=resolved.std)
