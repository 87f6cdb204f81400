"""U-Net-like decoder: from the encoder's stride-32 map up to the full-resolution anomaly map.

At each skip's stride (16, 8, 4, or 16, 8 for a head without stride 4): upsample x2 + conv, concatenate the
fused map of that stride, two conv-BN-ReLU. Without the stride-32 map (``bottom_channels`` None) the block
at stride 16 is two conv-BN-ReLU on the fused stride-16 map alone. Then a 1x1 conv to one logit channel and a
bilinear upsample to the image size. A 1x1 conv and bilinear interpolation are both linear and commute
exactly, so this equals the figure's "upsample, then conv" while convolving 16x (or 64x) fewer pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prnad.model.resize import resized


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """x (B, C_in, h, w), skip (B, C_skip, 2h, 2w) -> (B, C_out, 2h, 2w)."""

    def __init__(self, *, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = conv_bn_relu(c_in, c_out)
        self.fuse = nn.Sequential(conv_bn_relu(c_out + c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.fuse(torch.cat([x, skip], dim=1))  # cat: (B, C_out + C_skip, 2h, 2w)


class FirstBlock(nn.Module):
    """The block at stride 16 of a decoder without a bottom map: skip (B, C_skip, h, w) -> (B, C_out, h, w)."""

    def __init__(self, *, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(conv_bn_relu(c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(skip)


class Decoder(nn.Module):
    """bottom (B, C4, S/32, S/32) or None and skips [(B, C_i, S/r_i, S/r_i)], fine to coarse, each of half the
    side of the one before and the coarsest at S/16 -> logits (B, 1, S, S).

    ``skip_channels`` fine to coarse, ``channels`` coarse to fine (the block at stride 16 first), one each;
    ``bottom_channels`` None: no bottom map (the block at stride 16 is a :class:`FirstBlock`).
    """

    def __init__(
        self, *, bottom_channels: int | None, skip_channels: tuple[int, ...], channels: tuple[int, ...]
    ) -> None:
        super().__init__()
        if len(skip_channels) != len(channels) or not channels:
            raise ValueError(f"one decoder width per skip: {len(skip_channels)} skips, widths {list(channels)}")
        self.has_bottom = bottom_channels is not None
        widths_in = (bottom_channels, *channels[:-1])
        pairs = zip(widths_in, reversed(skip_channels), channels, strict=True)
        self.blocks = nn.ModuleList(
            FirstBlock(c_skip=s, c_out=c) if a is None else UpBlock(c_in=a, c_skip=s, c_out=c) for a, s, c in pairs
        )
        self.head = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, bottom: torch.Tensor | None, skips: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return resized(self.low_res(bottom, skips), size)  # bilinear, as two matmuls: (B, 1, S, S)

    def low_res(self, bottom: torch.Tensor | None, skips: list[torch.Tensor]) -> torch.Tensor:
        """The logits at the finest skip's resolution, before the upsampling to S: (B, 1, S/r, S/r)."""
        x = bottom
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = block(x, skip)
        return self.head(x)
