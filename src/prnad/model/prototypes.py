"""Multi-scale prototypes (K-means over whole normal feature maps) and prototypical residuals.

Shape letters: N normal images, K prototypes, D = C*H*W (one whole map flattened), B batch.
"""

from __future__ import annotations

import torch


def prototype_count(n_normal: int, ratio: float) -> int:
    """K = max(1, round(ratio * N_normal)) [P: Table 6]; ratio 1.0 keeps every normal map."""
    return max(1, round(ratio * n_normal))


def _kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to squared distance."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    dist = ((x - x[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        probs = dist.clamp_min(0) / dist.clamp_min(0).sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        idx = int(torch.multinomial(probs, 1, generator=generator))
        centres.append(x[idx])
        dist = torch.minimum(dist, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(centres)  # (K, D)


def _lloyd(x: torch.Tensor, centres: torch.Tensor, iterations: int) -> tuple[torch.Tensor, float]:
    """Lloyd iterations; an empty cluster keeps its previous centre. Returns centres and inertia."""
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)  # (N,)
        new = centres.clone()
        counts = torch.bincount(assign, minlength=centres.shape[0])
        new.index_add_(0, assign, x)
        nonempty = counts > 0
        new[nonempty] = (new[nonempty] - centres[nonempty]) / counts[nonempty, None]
        if torch.equal(new, centres):
            break
        centres = new
    inertia = float((torch.cdist(x, centres).min(1).values ** 2).sum())
    return centres, inertia


def kmeans(x: torch.Tensor, k: int, *, restarts: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Cluster rows of ``x`` (N, D) into ``k`` centres (K, D): k-means++ init, best of ``restarts`` runs.

    With k == N every row is its own prototype (the paper's 100% point): no clustering.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty (N, D) matrix, got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, N={x.shape[0]}], got {k}")
    if k == x.shape[0]:
        return x.clone()
    best, best_inertia = x[:k], float("inf")
    for _ in range(restarts):
        centres, inertia = _lloyd(x, _kmeans_pp_init(x, k, generator), iterations)
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The closest prototype (L2 over the whole map) for each image.

    features (B, C, H, W), prototypes (K, C, H, W) -> (B, C, H, W).
    """
    flat = features.flatten(1)  # (B, D)
    idx = torch.cdist(flat, prototypes.flatten(1)).argmin(1)  # (B,)
    return prototypes[idx]


def residual(features: torch.Tensor, prototype: torch.Tensor, kind: str) -> torch.Tensor:
    """Prototypical residual R of a feature map and its nearest prototype, element-wise, same shape."""
    diff = features - prototype
    if kind == "squared":
        return diff * diff
    if kind == "absolute":
        return diff.abs()
    if kind == "signed":
        return diff
    raise ValueError(f"unknown residual kind {kind!r}; expected squared, absolute or signed")
