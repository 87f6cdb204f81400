"""Multi-size Self-Attention (MSA): parallel window attention at several window sizes.

Tokens are the pixels' channel vectors. Branch g splits the map into a g x g grid of windows (g = 1 is the
whole map) and runs multi-head scaled dot-product attention inside each window. Keys and values of a
window are average-pooled to at most ``max_kv`` x ``max_kv`` tokens, so the whole-map branch at stride 4
costs (H*W) x max_kv^2 instead of (H*W)^2: this keeps CPU inference within budget while every query
still sees its whole window. The position term is learned: a depthwise 3x3 conv added to the input
(conditional position encoding), which works at any map size.

Shape letters: B batch, D channels, H/W map size, g grid, h/w window size, n heads, e head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _partition(x: torch.Tensor, grid: int, heads: int) -> torch.Tensor:
    """(B, D, H, W) -> (B*g*g, n, h*w, e): tokens of each window, split into heads."""
    b, d, hh, ww = x.shape
    h, w, e = hh // grid, ww // grid, d // heads
    x = x.view(b, heads, e, grid, h, grid, w)  # (B, n, e, g, h, g, w)
    x = x.permute(0, 3, 5, 1, 4, 6, 2)  # (B, g, g, n, h, w, e)
    return x.reshape(b * grid * grid, heads, h * w, e)


def _merge(x: torch.Tensor, batch: int, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_partition`: (B*g*g, n, h*w, e) -> (B, D, H, W)."""
    heads, e = x.shape[1], x.shape[3]
    h, w = size[0] // grid, size[1] // grid
    x = x.view(batch, grid, grid, heads, h, w, e)  # (B, g, g, n, h, w, e)
    x = x.permute(0, 3, 6, 1, 4, 2, 5)  # (B, n, e, g, h, g, w)
    return x.reshape(batch, heads * e, size[0], size[1])


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, grid: int, heads: int, max_kv: int
) -> torch.Tensor:
    """Attention inside each window of a ``grid`` x ``grid`` split. q, k, v, output: (B, D, H, W)."""
    b, _, hh, ww = q.shape
    if hh % grid or ww % grid:
        raise ValueError(f"map {hh}x{ww} does not split into a {grid}x{grid} grid")
    kv_h, kv_w = min(hh // grid, max_kv), min(ww // grid, max_kv)
    if (kv_h, kv_w) != (hh // grid, ww // grid):
        k = F.adaptive_avg_pool2d(k, (grid * kv_h, grid * kv_w))  # (B, D, g*kv_h, g*kv_w)
        v = F.adaptive_avg_pool2d(v, (grid * kv_h, grid * kv_w))
    out = F.scaled_dot_product_attention(
        _partition(q, grid, heads), _partition(k, grid, heads), _partition(v, grid, heads)
    )
    return _merge(out, b, grid, (hh, ww))  # (B, D, H, W)


class MSABlock(nn.Module):
    """One MSA block: position term, parallel window-attention branches merged by a 1x1 conv, then an FFN.

    Both sub-layers are pre-norm with a residual connection. Input and output: (B, D, H, W).
    """

    def __init__(self, *, channels: int, grids: tuple[int, ...], heads: int, max_kv: int, ffn_ratio: int = 2) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.grids, self.heads, self.max_kv = tuple(grids), heads, max_kv
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.BatchNorm2d(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.merge = nn.Conv2d(len(self.grids) * channels, channels, 1)
        self.norm2 = nn.BatchNorm2d(channels)
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, ffn_ratio * channels, 1), nn.GELU(), nn.Conv2d(ffn_ratio * channels, channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position(x)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=1)  # 3 x (B, D, H, W)
        branches = [window_attention(q, k, v, grid=g, heads=self.heads, max_kv=self.max_kv) for g in self.grids]
        x = x + self.merge(torch.cat(branches, dim=1))  # cat: (B, len(grids)*D, H, W)
        return x + self.ffn(self.norm2(x))


def msa_stack(*, channels: int, blocks: int, grids: tuple[int, ...], head_dim: int, max_kv: int) -> nn.Sequential:
    """``blocks`` MSA blocks at one scale; heads = max(1, channels // head_dim), lowered until it divides."""
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return nn.Sequential(*(MSABlock(channels=channels, grids=grids, heads=heads, max_kv=max_kv) for _ in range(blocks)))
