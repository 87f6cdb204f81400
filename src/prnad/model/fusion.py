"""Multi-scale Fusion (MF): HRNet-style exchange between three scales.

Every scale receives every other scale, summed with its own input: to a finer scale by a 1x1 conv and a
bilinear upsample, to a coarser one by strided 3x3 convs (one per halving). Scales are ordered fine to
coarse, each half the side of the previous one. Shapes: input and output maps (B, C_i, H_i, W_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


def _downsample(c_in: int, c_out: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 3x3 convs; the intermediate ones keep c_in channels and end in ReLU."""
    layers: list[nn.Module] = []
    for _ in range(steps - 1):
        layers += [_conv_bn(c_in, c_in, 3, 2), nn.ReLU(inplace=True)]
    layers.append(_conv_bn(c_in, c_out, 3, 2))
    return nn.Sequential(*layers)


class MultiScaleFusion(nn.Module):
    """Exchange information between scales; an input BatchNorm per scale puts every input on one footing.

    The input BatchNorm matters for residual maps, whose squared values span orders of magnitude between
    scales and backbones. Output i = BN(x_i) + sum over j != i of transform_ji(BN(x_j)); with ``exchange``
    False (the paper's ablation without MF) output i = BN(x_i).
    """

    def __init__(self, *, channels: tuple[int, ...], exchange: bool = True) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.input_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
        self.transforms = nn.ModuleDict()
        for i, c_out in enumerate(channels if exchange else ()):
            for j, c_in in enumerate(channels):
                if j > i:
                    self.transforms[f"{j}to{i}"] = _conv_bn(c_in, c_out, 1, 1)
                elif j < i:
                    self.transforms[f"{j}to{i}"] = _downsample(c_in, c_out, i - j)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} maps, got {len(maps)}")
        normed = [norm(x) for norm, x in zip(self.input_norms, maps, strict=True)]
        fused = []
        for i, x_i in enumerate(normed):
            out = x_i
            for j, x_j in enumerate(normed):
                if j == i or f"{j}to{i}" not in self.transforms:
                    continue
                y = self.transforms[f"{j}to{i}"](x_j)
                if j > i:
                    y = F.interpolate(y, size=x_i.shape[-2:], mode="bilinear", align_corners=False)
                out = out + y
            fused.append(out)
        return fused
