"""Multi-size Self-Attention (MSA): parallel window attention at several window sizes.

Tokens are the pixels' channel vectors. Branch g splits the map into a g x g grid of windows (g = 1 is the
whole map) and runs multi-head scaled dot-product attention inside each window. Keys and values of a
window are average-pooled to at most ``max_kv`` x ``max_kv`` tokens, so the whole-map branch at stride 4
costs (H*W) x max_kv^2 instead of (H*W)^2: this keeps CPU inference within budget while every query
still sees its whole window. The position term is learned: a depthwise 3x3 conv added to the input
(conditional position encoding), which works at any map size.

Inside a stack the map is kept channels-last, (B, H, W, D), so that projections are plain matrix
products (nn.Linear) and window partitioning moves whole channel vectors.

Shape letters: B batch, D channels, H/W map size, g grid, h/w window size, n heads, e head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _partition(x: torch.Tensor, grid: int, heads: int) -> torch.Tensor:
    """(B, H, W, D) -> (B*g*g, n, h*w, e): tokens of each window, split into heads."""
    b, hh, ww, d = x.shape
    h, w, e = hh // grid, ww // grid, d // heads
    x = x.view(b, grid, h, grid, w, heads, e)  # (B, g, h, g, w, n, e)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, g, g, n, h, w, e)
    return x.reshape(b * grid * grid, heads, h * w, e)


def _merge(x: torch.Tensor, batch: int, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_partition`: (B*g*g, n, h*w, e) -> (B, H, W, D)."""
    heads, e = x.shape[1], x.shape[3]
    h, w = size[0] // grid, size[1] // grid
    x = x.view(batch, grid, grid, heads, h, w, e)  # (B, g, g, n, h, w, e)
    x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, g, h, g, w, n, e)
    return x.reshape(batch, size[0], size[1], heads * e)


def _pool(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Average-pool a channels-last map (B, H, W, D) to (B, out_h, out_w, D)."""
    nchw = x.permute(0, 3, 1, 2)  # a view; channels-last in memory, which oneDNN pools fast
    hh, ww = nchw.shape[-2:]
    if hh % out_h == 0 and ww % out_w == 0:
        pooled = F.avg_pool2d(nchw, (hh // out_h, ww // out_w))
    else:
        pooled = F.adaptive_avg_pool2d(nchw, (out_h, out_w))
    return pooled.permute(0, 2, 3, 1)


def pooled_size(size: tuple[int, int], grid: int, max_kv: int) -> tuple[int, int]:
    """Side of the keys' map for a ``grid`` x ``grid`` split of a ``size`` map: each window's keys average-pooled
    to at most ``max_kv`` x ``max_kv``, so (g * min(H/g, max_kv), g * min(W/g, max_kv))."""
    hh, ww = size
    if hh % grid or ww % grid:
        raise ValueError(f"map {hh}x{ww} does not split into a {grid}x{grid} grid")
    return grid * min(hh // grid, max_kv), grid * min(ww // grid, max_kv)


def window_attention(q: torch.Tensor, kv: torch.Tensor, *, grid: int, heads: int) -> torch.Tensor:
    """Attention inside each window of a ``grid`` x ``grid`` split.

    q: (B, H, W, D); kv: keys and values side by side, (B, H', W', 2D), H' and W' multiples of the grid (each
    window's keys may be pooled to fewer than its queries). Output: (B, H, W, D).
    """
    b, hh, ww, _ = q.shape
    if hh % grid or ww % grid or kv.shape[1] % grid or kv.shape[2] % grid:
        raise ValueError(f"maps {hh}x{ww} and {kv.shape[1]}x{kv.shape[2]} do not split into a {grid}x{grid} grid")
    k, v = kv.chunk(2, dim=-1)
    parts = (_partition(t, grid, heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(*parts)  # (B*g*g, n, h*w, e)
    return _merge(out, b, grid, (hh, ww))  # (B, H, W, D)


class MSABlock(nn.Module):
    """One MSA block, as the figure draws it: position term, parallel window-attention branches, merged back
    to D channels by a linear map (a 1x1 conv), with a pre-norm (LayerNorm) and a residual connection.

    No feed-forward sub-layer: the figure has none, and at stride 4 it would cost as much as the attention.
    Input and output: (B, H, W, D).
    """

    def __init__(self, *, channels: int, grids: tuple[int, ...], heads: int, max_kv: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.grids, self.heads, self.max_kv = tuple(grids), heads, max_kv
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.merge = nn.Linear(len(self.grids) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.position(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # conv on a channels-last view
        normed = self.norm(x)  # (B, H, W, D)
        d = x.shape[-1]
        sizes = [pooled_size(x.shape[1:3], g, self.max_kv) for g in self.grids]
        if any(s == x.shape[1:3] for s in sizes):
            # some branch reads every location's keys: project every location once, pool per branch
            qkv = self.qkv(normed)  # (B, H, W, 3D)
            q, kv = qkv[..., :d], qkv[..., d:]  # (B, H, W, D), (B, H, W, 2D)
            kvs = [kv if s == kv.shape[1:3] else _pool(kv, *s) for s in sizes]
        else:
            # every branch pools: pool first, then project the fewer vectors. Average pooling and an affine
            # map commute (pooling weights sum to 1), so this equals projecting, then pooling
            w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): rows [query; key; value]
            q = F.linear(normed, w[:d], b[:d])  # (B, H, W, D)
            kvs = [F.linear(_pool(normed, *s), w[d:], b[d:]) for s in sizes]  # (B, H', W', 2D)
        branches = [window_attention(q, kv, grid=g, heads=self.heads) for g, kv in zip(self.grids, kvs, strict=True)]
        return x + self.merge(torch.cat(branches, dim=-1))  # cat: (B, H, W, len(grids)*D)


class MSAStack(nn.Module):
    """``blocks`` MSA blocks at one scale. Input and output: (B, D, H, W)."""

    def __init__(self, *, channels: int, blocks: int, grids: tuple[int, ...], head_dim: int, max_kv: int) -> None:
        super().__init__()
        heads = max(1, channels // head_dim)
        while channels % heads:
            heads -= 1
        self.blocks = nn.Sequential(
            *(MSABlock(channels=channels, grids=grids, heads=heads, max_kv=max_kv) for _ in range(blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.blocks):
            return x
        tokens = self.blocks(x.permute(0, 2, 3, 1))  # (B, H, W, D)
        return tokens.permute(0, 3, 1, 2)  # (B, D, H, W), channels-last in memory
