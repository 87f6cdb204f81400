"""Bilinear upsampling of one-channel maps as matrix products, and the sum of several such maps in one product.

``F.interpolate(x, size, mode="bilinear", align_corners=False)`` is separable and linear: for a map X (h, w) it
equals A_h X A_w^T, with A_h (H, h) and A_w (W, w) the interpolation matrices of each axis
(:func:`bilinear_matrix`). OpenVINO spent 1.7 ms of 15.0 in the three resizes of PRN's one-channel maps to the
image size (benchmarks/results/ov_profile_fast_graph2.md). As matrix products a resize is two small matmuls,
and a sum of resized maps sum_i A_i X_i B_i^T is one more: [A_1 X_1 | A_2 X_2 | ...] [B_1 | B_2 | ...]^T.
"""

from __future__ import annotations

import torch


def bilinear_matrix(n_in: int, n_out: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): row j holds the weights by which ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` mixes the input samples into output sample j along one axis.

    The source coordinate of output j is (j + 0.5) n_in / n_out - 0.5, clamped at 0 (PyTorch's rule); it mixes
    samples floor(src) and floor(src) + 1 (clamped to n_in - 1) with weights 1 - frac and frac. Built on
    ``device`` in float32 (no copy from the host, so it can run inside a captured CUDA graph; MPS has no
    float64), then cast to ``dtype``.
    """
    src = ((torch.arange(n_out, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)  # (n_out,) float32
    low = src.floor().clamp_max(n_in - 1)
    high = (low + 1).clamp_max(n_in - 1)
    frac = (src - low)[:, None]  # (n_out, 1)
    samples = torch.arange(n_in, device=device, dtype=src.dtype)  # (n_in,)
    # at the last samples low == high: the two terms fall on one column and add up to 1
    weights = (samples == low[:, None]) * (1 - frac) + (samples == high[:, None]) * frac  # (n_out, n_in)
    return weights.to(dtype)


def resized_sum(maps: list[torch.Tensor], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Sum of the ``maps`` (each (B, C, h_i, w_i)) each bilinearly resized to ``size`` (H, W), as
    ``F.interpolate(..., align_corners=False)`` resizes: (B, C, H, W) in the first map's dtype.

    Per map one matmul along the rows, (H, h_i) @ (B, C, h_i, w_i) -> (B, C, H, w_i); the results side by side,
    (B, C, H, sum w_i), times the stacked column matrices (sum w_i, W): one matmul for the whole sum.
    """
    height, width = int(size[0]), int(size[1])
    dtype, device = maps[0].dtype, maps[0].device
    rows, cols = [], []
    for m in maps:
        h, w = m.shape[-2:]
        rows.append(bilinear_matrix(h, height, dtype=dtype, device=device) @ m.to(dtype))  # (B, C, H, w_i)
        cols.append(bilinear_matrix(w, width, dtype=dtype, device=device))  # (W, w_i)
    return torch.cat(rows, dim=-1) @ torch.cat(cols, dim=1).T  # (B, C, H, sum w_i) @ (sum w_i, W)


def resized(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` (B, C, h, w) bilinearly resized to ``size`` (H, W), as ``F.interpolate(..., align_corners=False)``."""
    return resized_sum([x], size)
