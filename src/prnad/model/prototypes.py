"""Multi-scale prototypes (K-means over whole normal feature maps) and prototypical residuals.

Shape letters: N normal images, K prototypes, D = C*H*W (one whole map flattened), B batch.
"""

from __future__ import annotations

import torch


def prototype_count(n_normal: int, ratio: float) -> int:
    """K = max(1, round(ratio * N_normal)) [P: Table 6]; ratio 1.0 keeps every normal map."""
    return max(1, round(ratio * n_normal))


def _sq_distances(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, K) from every point to every centre c_k = sum_i W_ki x_i, from the Gram matrix.

    ||x_i - c_k||^2 = G_ii - 2 (G W^T)_ik + (W G W^T)_kk, with gram (N, N) and weights (K, N).
    """
    gw = gram @ weights.T  # (N, K)
    centre_norms = (weights * gw.T).sum(1)  # (K,) = diag(W G W^T)
    return (gram.diagonal()[:, None] - 2 * gw + centre_norms[None, :]).clamp_min_(0)


def _kmeans_pp_init(gram: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre is a point drawn with probability proportional to its squared
    distance to the nearest centre so far. Returns one-hot centre weights (K, N)."""
    n = gram.shape[0]
    weights = torch.zeros(k, n, dtype=gram.dtype)
    weights[0, int(torch.randint(n, (1,), generator=generator))] = 1
    for j in range(1, k):
        dist = _sq_distances(gram, weights[:j]).min(1).values  # (N,)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        weights[j, int(torch.multinomial(probs, 1, generator=generator))] = 1
    return weights


def _lloyd(gram: torch.Tensor, weights: torch.Tensor, iterations: int) -> tuple[torch.Tensor, float]:
    """Lloyd iterations on centre weights (K, N); an empty cluster keeps its previous centre.

    Returns the final weights and the inertia (sum of squared distances to the nearest centre).
    """
    assign = _sq_distances(gram, weights).argmin(1)  # (N,)
    for _ in range(iterations):
        members = torch.nn.functional.one_hot(assign, weights.shape[0]).T.to(gram.dtype)  # (K, N)
        counts = members.sum(1, keepdim=True)  # (K, 1)
        weights = torch.where(counts > 0, members / counts.clamp_min(1), weights)
        new_assign = _sq_distances(gram, weights).argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    inertia = float(_sq_distances(gram, weights).min(1).values.sum())
    return weights, inertia


# Columns of X converted to float64 at a time: 2^22 elements (32 MiB) bounds the temporary copy, and for
# N of a few hundred a chunk still holds ten thousand or more columns, so the matmuls stay efficient.
CHUNK_ELEMENTS = 1 << 22


def _column_chunks(x: torch.Tensor, chunk_columns: int | None) -> list[slice]:
    """Slices over the D columns of ``x`` (N, D), ``chunk_columns`` wide (default: CHUNK_ELEMENTS // N)."""
    width = chunk_columns or max(1, CHUNK_ELEMENTS // x.shape[0])
    return [slice(a, a + width) for a in range(0, x.shape[1], width)]


def gram_matrix(x: torch.Tensor, *, chunk_columns: int | None = None) -> torch.Tensor:
    """G = X X^T (N, N) in float64, summed over column chunks: no float64 copy of the whole (N, D) ``x``."""
    gram = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for cols in _column_chunks(x, chunk_columns):
        block = x[:, cols].double()  # (N, c)
        gram.addmm_(block, block.T)
    return gram


def combine_rows(weights: torch.Tensor, x: torch.Tensor, *, chunk_columns: int | None = None) -> torch.Tensor:
    """Centres W X (K, D) in ``x``'s dtype, computed in float64 one column chunk at a time.

    weights (K, N) float64, x (N, D).
    """
    out = torch.empty(weights.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    for cols in _column_chunks(x, chunk_columns):
        out[:, cols] = weights @ x[:, cols].double()  # (K, c)
    return out


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    restarts: int,
    iterations: int,
    generator: torch.Generator,
    chunk_columns: int | None = None,
) -> torch.Tensor:
    """Cluster rows of ``x`` (N, D) into ``k`` centres (K, D): k-means++ init, best of ``restarts`` runs.

    Runs on the Gram matrix (N, N) in float64, so each step costs O(N^2 K) whatever D is: whole feature
    maps have D in the hundreds of thousands, N only a few hundred. The Gram matrix and the final centres
    are computed ``chunk_columns`` columns at a time (default: 32 MiB of float64), so memory beyond ``x``
    stays O(N^2 + K D). With k == N every row is its own prototype (the paper's 100% point): no clustering.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty (N, D) matrix, got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, N={x.shape[0]}], got {k}")
    if k == x.shape[0]:
        return x.clone()
    gram = gram_matrix(x, chunk_columns=chunk_columns)  # (N, N)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        weights, inertia = _lloyd(gram, _kmeans_pp_init(gram, k, generator), iterations)
        if inertia < best_inertia:
            best, best_inertia = weights, inertia
    return combine_rows(best, x, chunk_columns=chunk_columns)  # (K, D)


def _nearest_rows(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``rows`` (K, D) for each of ``queries`` (Q, D), by L2: (Q,) long.

    ||r||^2 - 2 q.r (||q||^2 is constant in K): a matmul and an argmin, not cdist, so it exports; it is also
    what cdist computes for large D.
    """
    return _ranking_distances(queries, rows).argmin(1)  # (Q, K) -> (Q,)


def _ranking_distances(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """||r||^2 - 2 q.r for ``queries`` (..., Q, D) and ``rows`` (K, D): (..., Q, K), the squared L2 distances
    less the constant ||q||^2, so they rank the rows of each query as the distances do.

    One matmul of the queries with a 1 appended, (..., Q, D + 1), and the rows as [-2 r, ||r||^2], (K, D + 1):
    no elementwise pass over the (Q, K) matrix (in ONNX Runtime that pass cost about as much as the matmul).
    """
    ones = torch.ones_like(queries[..., :1])  # (..., Q, 1)
    augmented = torch.cat([-2 * rows, (rows * rows).sum(1, keepdim=True)], dim=1)  # (K, D + 1)
    return torch.cat([queries, ones], dim=-1) @ augmented.T


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The closest prototype (L2 over the whole map) for each image.

    features (B, C, H, W), prototypes (K, C, H, W) -> (B, C, H, W).
    """
    return prototypes[_nearest_rows(features.flatten(1), prototypes.flatten(1))]  # (B, C, H, W)


def nearest_prototype_per_location(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """At every location, the closest of the K prototypes' vectors at that location (L2 over channels).

    features (B, C, H, W), prototypes (K, C, H, W) -> (B, C, H, W). Unlike :func:`nearest_prototype` (one
    prototype for the whole map), each location may take another prototype: a part seen at another angle
    or position can still find a matching normal vector where the whole-map match has none.
    """
    f = features.permute(2, 3, 0, 1)  # (H, W, B, C)
    p = prototypes.permute(2, 3, 1, 0)  # (H, W, C, K)
    dist = (p * p).sum(2, keepdim=True) - 2 * (f @ p)  # ||p||^2 - 2 f.p: (H, W, B, K); ||f||^2 is constant in K
    idx = dist.argmin(-1)  # (H, W, B)
    b, c = features.shape[:2]
    index = idx.permute(2, 0, 1)[:, None, None].expand(b, 1, c, *idx.shape[:2])  # (B, 1, C, H, W)
    chosen = prototypes[None].expand(b, *prototypes.shape).gather(1, index)  # (B, 1, C, H, W)
    return chosen[:, 0]


def no_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """No prototype: the features themselves, so every residual is 0 and the head reads the features alone
    (the paper's Table 4 without prototypes). features (B, C, H, W) -> the same tensor."""
    return features


def nearest_patch(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """At every location, the closest vector of a memory bank, wherever in the image it was seen (L2 over channels).

    features (B, C, H, W), bank (M, C, 1, 1) -> (B, C, H, W). Position-free, as PatchCore's memory bank: a part
    at any angle or position finds its normal vectors. One batched matmul (B*H*W, M) and a gather: no loop,
    so it exports with a dynamic batch (a 16 x 64 x 64 batch against 1024 vectors holds 256 MiB of distances).
    Where the two nearest vectors are a near-tie it returns a blend of them (:func:`_tie_stable_nearest`).
    """
    b, c, h, w = features.shape
    vectors = bank.flatten(1)  # (M, C)
    queries = features.permute(0, 2, 3, 1).reshape(-1, c)  # (B*H*W, C)
    chosen = _tie_stable_nearest(queries, vectors)  # (B*H*W, C)
    return chosen.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)


TIE_WIDTH = 1e-4  # relative gap in squared distance over which a near-tie turns into a clean choice


def _tie_stable_nearest(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The nearest of ``rows`` (K, D) to each of ``queries`` (Q, D), continuous across near-ties: (Q, D).

    The two nearest rows r1, r2 (by the matmul form, then their direct squared distances d1 <= d2) are
    blended as w r1 + (1 - w) r2 with w = sigmoid((d2 - d1) / (TIE_WIDTH d1)): r1 itself (w > 0.9999)
    wherever d2 exceeds d1 by more than 0.1 %, their midpoint at an exact tie. A hard argmin jumps from r1 to
    r2 as the query crosses the tie, so two engines whose features differ in the last float32 digits could
    pick different rows (bottle: relative gaps down to 3e-6, map differences of 4e-3); the blend moves
    smoothly there, and equals the hard choice everywhere else.
    """
    if rows.shape[0] == 1:
        return rows.expand(queries.shape[0], -1)
    two = rows[_ranking_distances(queries, rows).topk(2, dim=1, largest=False).indices]  # (Q, 2, D)
    sq = (queries[:, None, :] - two).square().sum(-1)  # (Q, 2): direct squared distances, no cancellation
    # sigmoid((d_1 - d_0) / s) is the nearer row's weight when two[:, 0] is the nearer, and 1 minus it otherwise
    w0 = torch.sigmoid((sq[:, 1] - sq[:, 0]) / (TIE_WIDTH * sq.amin(1).clamp_min(1e-12)))[:, None]  # (Q, 1)
    return w0 * two[:, 0] + (1 - w0) * two[:, 1]  # (Q, D)


def local_average(features: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Each location's 3x3 neighbourhood mean (PatchCore's local aggregation), zero-padded, at every ``step``-th
    location: (B, C, H, W) -> (B, C, ceil(H / step), ceil(W / step)); ``step`` 1 keeps the shape."""
    return torch.nn.functional.avg_pool2d(features, 3, stride=step, padding=1)


def nearest_distance_map(features: torch.Tensor, bank: torch.Tensor, step: int = 1) -> torch.Tensor:
    """At every ``step``-th location, the L2 distance from the locally averaged feature vector to its nearest
    bank vector: features (B, C, H, W), bank (M, C) -> (B, 1, H', W') in features' dtype, H' = ceil(H / step).

    ||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r, minimised over the M bank vectors: one batched matmul
    (:func:`_ranking_distances`), exportable. ``step`` 2 computes a quarter of the distances.
    """
    averaged = local_average(features, step)  # (B, C, H', W')
    b, c, h, w = averaged.shape
    queries = averaged.permute(0, 2, 3, 1).reshape(b, -1, c)  # (B, H'*W', C)
    sq = (queries * queries).sum(-1) + _ranking_distances(queries, bank).amin(-1)  # (B, H'*W')
    return sq.clamp_min(0).sqrt().view(b, 1, h, w)  # (B, H'*W') -> (B, 1, H', W')


def coreset(x: torch.Tensor, m: int, *, generator: torch.Generator, candidates: int = 200_000) -> torch.Tensor:
    """``m`` rows of ``x`` (P, C) chosen by greedy farthest-point selection (PatchCore's coreset) -> (M, C).

    At most ``candidates`` rows, drawn at random, enter the selection (bounds the cost: M passes over them).
    The first row is drawn at random; each next is the candidate farthest from all chosen so far.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected a non-empty (P, C) matrix, got {tuple(x.shape)}")
    if x.shape[0] > candidates:
        x = x[torch.randperm(x.shape[0], generator=generator)[:candidates]]
    m = min(m, x.shape[0])
    sq_norms = (x * x).sum(1)  # (P,)

    def sq_distances_to(i: int) -> torch.Tensor:  # (P,): ||x - x_i||^2 as a matrix-vector product, no (P, C) temporary
        return (sq_norms - 2 * (x @ x[i]) + sq_norms[i]).clamp_min_(0)

    chosen = torch.empty(m, dtype=torch.long)
    chosen[0] = int(torch.randint(x.shape[0], (1,), generator=generator))
    nearest = sq_distances_to(int(chosen[0]))  # (P,) squared distance to the nearest chosen row
    for j in range(1, m):
        chosen[j] = int(nearest.argmax())
        nearest = torch.minimum(nearest, sq_distances_to(int(chosen[j])))
    return x[chosen].clone()


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
