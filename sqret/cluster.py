"""k-means for product quantization, built on ``sqret.ops.encode``: M sub-space k-means at once."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import ops


def _kmeans_pp(xs: torch.Tensor, K: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding in every sub-space at once: xs [N, M, d] -> codebooks [M, K, dsub]."""
    N, M, d = xs.shape
    sub = xs.transpose(0, 1)  # [M, N, d]
    ar = torch.arange(M, device=xs.device)
    first = torch.randint(0, N, (M,), generator=g).to(xs.device)
    C = torch.empty(M, K, d, device=xs.device, dtype=xs.dtype)
    C[:, 0] = sub[ar, first]
    best = (sub - C[:, :1]).square().sum(-1)  # [M, N] squared distance to the nearest chosen seed
    for j in range(1, K):
        weights = best.cpu().double() + 1e-30  # all-equal points still give a valid distribution
        pick = torch.multinomial(weights, 1, generator=g)[:, 0].to(xs.device)
        C[:, j] = sub[ar, pick]
        best = torch.minimum(best, (sub - C[:, j : j + 1]).square().sum(-1))
    return C


def train_pq(
    x: torch.Tensor,
    M: int,
    K: int,
    *,
    iters: int = 25,
    metric: str = "l2",
    seed: int = 0,
    max_points_per_centroid: int = 256,
    progress: bool | None = None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Codebooks [M, K, dsub] from training vectors x [N, d] (d = M * dsub) by Lloyd's k-means per sub-space.

    Seeding is k-means++ per sub-space; assignment is ``ops.encode`` (so it runs on the fastest backend);
    the update is a scatter-add of the sub-vectors. Empty clusters are re-seeded with random training
    sub-vectors. For ``metric="cos"`` the codewords are kept unit-norm (spherical k-means); ``"ip"``
    trains with l2, as FAISS does.
    At most ``max_points_per_centroid * K`` points are used (a random sample), as in FAISS. ``init``
    [M, K, dsub] starts from given codebooks instead of k-means++ (warm starts, e.g. in OPQ).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, d], got {getattr(x, 'shape', type(x))}")
    N, D = x.shape
    if M < 1 or D % M:
        raise ValueError(f"D = {D} features are not divisible into M = {M} sub-spaces")
    if K < 1 or N < K:
        raise ValueError(f"k-means with K = {K} codewords needs at least K training vectors, got N = {N}")
    ops.checks.metric(metric)
    d = D // M
    g = torch.Generator().manual_seed(seed)
    if N > max_points_per_centroid * K:
        x = x[torch.randperm(N, generator=g)[: max_points_per_centroid * K].to(x.device)]
        N = x.shape[0]
    assign = "cos" if metric == "cos" else "l2"
    xs = x.float().reshape(N, M, d)
    if assign == "cos":
        xs = torch.nn.functional.normalize(xs, dim=-1)
    C = _kmeans_pp(xs, K, g) if init is None else init.to(xs.device, xs.dtype).clone()
    sub = torch.arange(M, device=x.device).expand(1, M)
    for _ in tqdm(range(iters), desc="k-means", disable=None if progress is None else not progress, leave=False):
        codes = ops.encode(xs.reshape(N, D), C, assign).long()  # [N, M]
        sums = torch.zeros_like(C).index_put_((sub, codes), xs, accumulate=True)
        ones = torch.ones(N, M, device=x.device)
        counts = torch.zeros(M, K, device=x.device).index_put_((sub, codes), ones, accumulate=True)
        C = sums / counts.clamp_min(1).unsqueeze(-1)
        empty = counts == 0
        if empty.any():
            m_idx, _ = empty.nonzero(as_tuple=True)
            pick = torch.randint(0, N, (m_idx.numel(),), generator=g).to(x.device)
            C[empty] = xs[pick, m_idx]
        if assign == "cos":
            C = torch.nn.functional.normalize(C, dim=-1)
    return C
