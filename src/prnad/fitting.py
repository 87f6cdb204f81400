"""Non-gradient fitting: the multi-scale prototypes, computed once from the normal images before training.

It sits beside the model, not inside the training loop (as anomalib's PatchCore ``fit()``), and keeps peak
memory near one float32 copy of the three feature scales: each scale is preallocated (N, C_i, H_i, W_i) and
filled batch by batch, and K-means works on the (N, N) Gram matrix, built column chunk by column chunk.

Shape letters: N normal images, S image side, C_i/H_i/W_i channels and size at scale i, K prototypes.
"""

from __future__ import annotations

import numpy as np
import torch

from prnad.model.encoder import Encoder
from prnad.model.prn import SCORE_SCALES
from prnad.model.prototypes import coreset, kmeans, local_average, prototype_count


def to_batch(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(b, S, S, 3) uint8 -> (b, 3, S, S) float RGB in [0, 1] on ``device``."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def encode_normals(
    encoder: Encoder, normals: np.ndarray, *, device: torch.device | str, batch_size: int = 16
) -> list[torch.Tensor]:
    """PRN's three encoder scales of every image, on the CPU: (N, S, S, 3) uint8 -> 3 x (N, C_i, H_i, W_i).

    Each scale is allocated once, at its final size, when the first batch shows its shape, then filled in
    place: no list of batches and no concatenation, so the features are never held twice.
    """
    if normals.ndim != 4 or normals.shape[-1] != 3 or normals.dtype != np.uint8 or len(normals) < 1:
        raise ValueError(f"expected normal images (N, S, S, 3) uint8 with N >= 1, got {normals.shape} {normals.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(normals)
    scales: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        maps = encoder(to_batch(normals[start:stop], device), stages=3)  # 3 x (b, C_i, H_i, W_i)
        if not scales:
            scales = [torch.empty(n, *f.shape[1:], dtype=torch.float32) for f in maps]
        for out, f in zip(scales, maps, strict=True):
            out[start:stop] = f
    return scales


def compute_prototypes(
    encoder: Encoder,
    normals: np.ndarray,
    *,
    ratio: float,
    restarts: int,
    iterations: int,
    seed: int,
    device: torch.device | str,
    batch_size: int = 16,
    bank_size: int | None = None,
    scales: tuple[int, ...] = (0, 1, 2),
) -> list[torch.Tensor]:
    """K-means prototypes per scale of ``scales`` (encoder scales, fine to coarse) over whole normal feature
    maps: one (K, C_i, H_i, W_i) float32 tensor per scale, on the CPU.

    ``normals`` (N, S, S, 3) uint8; K = max(1, round(ratio * N)). One generator seeded with ``seed`` serves
    the scales in order (finest first), so a seed fixes the prototypes. Each scale's features are
    released as soon as it is clustered: they are the bulk of the memory (2.7 GiB for Wide-ResNet50-2 on
    391 images at 256 px), the Gram matrix and centres are small beside them.
    With ``bank_size`` set, each scale is instead a memory bank (M, C_i, 1, 1): ``bank_size`` location
    vectors from all normal maps chosen by greedy coreset (for ``prototype_match: patch``).
    """
    generator = torch.Generator().manual_seed(seed)
    k = prototype_count(len(normals), ratio)
    encoded = encode_normals(encoder, normals, device=device, batch_size=batch_size)
    maps_per_scale = [encoded[i] for i in scales]
    del encoded
    prototypes = []
    while maps_per_scale:
        maps = maps_per_scale.pop(0)  # (N, C, H, W); the list no longer holds it
        if bank_size is not None:
            vectors = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])  # (N*H*W, C)
            prototypes.append(coreset(vectors, bank_size, generator=generator)[:, :, None, None])  # (M, C, 1, 1)
            continue
        centres = kmeans(maps.flatten(1), k, restarts=restarts, iterations=iterations, generator=generator)
        prototypes.append(centres.view(k, *maps.shape[1:]))  # (K, C, H, W)
    return prototypes


def compute_score_banks(
    encoder: Encoder,
    normals: np.ndarray,
    *,
    size: int | tuple[int, ...],
    seed: int,
    device: torch.device | str,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """The score's memory banks: per scale of ``SCORE_SCALES`` (strides 8 and 16), ``size`` locally averaged
    (3x3) location vectors of the normal images chosen by greedy coreset -> 2 x (M_i, C_i) float32 on the CPU.

    ``size``: one size for both scales, or one per scale. ``normals`` (N, S, S, 3) uint8; one generator seeded
    with ``seed`` serves the scales in order (a scale's draws do not depend on its size, so a bank is the first
    rows of the same scale's larger bank).
    """
    sizes = (size,) * len(SCORE_SCALES) if isinstance(size, int) else tuple(size)
    if len(sizes) != len(SCORE_SCALES):
        raise ValueError(f"expected one bank size or {len(SCORE_SCALES)}, got {sizes}")
    generator = torch.Generator().manual_seed(seed)
    scales = encode_normals(encoder, normals, device=device, batch_size=batch_size)
    banks = []
    for i, m in zip(SCORE_SCALES, sizes, strict=True):
        maps = local_average(scales[i])  # (N, C, H, W)
        vectors = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])  # (N*H*W, C)
        banks.append(coreset(vectors, m, generator=generator))  # (M_i, C)
    return banks
