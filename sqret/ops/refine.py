"""Refinement: candidates re-ranked by exact distances to stored vectors (FAISS's IndexRefine, ScaNN's reorder).

Stored vectors are float32 or float16 [n, d], or 8-bit scalar-quantized codes [n, d] uint8 decoded per
dimension as ``vmin[j] + code * scale[j]`` (:func:`sq8_train`, :func:`sq8_encode`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import checks, registry

STORE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.uint8: 2}


def sq8_train(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension (vmin [d], scale [d]) of the 8-bit scalar quantizer of x [n, d]: 256 levels from the
    smallest to the largest value of each dimension (scale 1 where a dimension is constant)."""
    x = x.to(torch.float32)
    vmin, vmax = x.min(0).values, x.max(0).values
    scale = (vmax - vmin) / 255.0
    return vmin.contiguous(), torch.where(scale > 0, scale, torch.ones_like(scale)).contiguous()


def sq8_encode(x: Tensor, vmin: Tensor, scale: Tensor) -> Tensor:
    """uint8 codes [n, d] of x: round((x - vmin) / scale), clamped to [0, 255]."""
    return torch.round((x.to(torch.float32) - vmin) / scale).clamp_(0, 255).to(torch.uint8)


def sq8_decode(codes: Tensor, vmin: Tensor, scale: Tensor) -> Tensor:
    return vmin + codes.to(torch.float32) * scale


def _as_store(vectors) -> Tensor:
    """A tensor over the same memory (a read-only memory map too: it is never written)."""
    if isinstance(vectors, np.ndarray):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(vectors))
    return vectors


@dataclass(frozen=True)
class Refinement:
    """A re-rank stage for a search (``ivf_search(..., refine=...)``): each query's ``candidates`` best by the
    search's own distances re-ranked by exact distances to ``vectors`` (the rows its ids name), as
    :func:`refine_topk` takes them (``labels``: row -> id; ``sq8`` with SQ8 codes)."""

    vectors: Tensor | np.ndarray
    candidates: int
    labels: Tensor | None = None
    sq8: tuple[Tensor, Tensor] | None = None


def check_refinement(r: Refinement, queries: Tensor, k: int) -> Refinement:
    """r with its vectors as a tensor, checked against queries [Q, d] and the k results wanted."""
    if not isinstance(r, Refinement):
        raise TypeError(f"refine must be an ops.Refinement, got {type(r).__name__}")
    vectors = _as_store(r.vectors)
    _check_store(vectors, queries, r.labels, r.sq8)
    kc = checks.topk_k(r.candidates)
    if kc < k:
        raise ValueError(f"refine.candidates = {kc} must be at least k = {k}")
    return Refinement(vectors, kc, r.labels, r.sq8)


def _check_store(vectors: Tensor, queries: Tensor, labels, sq8) -> None:
    checks.tensor(vectors, "vectors", 2, tuple(STORE_DTYPES))
    n, d = vectors.shape
    checks.tensor(queries, "queries", 2, checks.FLOATS)
    if queries.shape[1] != d:
        raise ValueError(f"queries have d = {queries.shape[1]}, the stored vectors d = {d}")
    if (vectors.dtype == torch.uint8) != (sq8 is not None):
        raise ValueError("uint8 vectors are SQ8 codes: pass sq8=(vmin, scale) with them, and only with them")
    if sq8 is not None:
        for name, t in zip(("vmin", "scale"), sq8, strict=True):
            checks.tensor(t, name, 1, (torch.float32,))
            if t.shape[0] != d:
                raise ValueError(f"{name} must be [d = {d}], got {tuple(t.shape)}")
    if labels is not None:
        checks.tensor(labels, "labels", 1, (torch.int64,))
        if labels.shape[0] != n:
            raise ValueError(f"labels must be [n = {n}], got {tuple(labels.shape)}")


def refine_topk(queries: Tensor, vectors, candidates: Tensor, k: int, metric: str = "l2", *,
                labels: Tensor | None = None, sq8: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The k best of each query's candidate rows by exact distance: (values [Q, k] float32, ids [Q, k] int64),
    best first, ties by the smaller id, padded with -1 / +inf (-inf for ip).

    queries [Q, d]; vectors [n, d] float32 / float16 (tensor or array, e.g. memory-mapped), or uint8 SQ8 codes
    with ``sq8 = (vmin [d], scale [d])``; candidates [Q, kc] int64 rows (-1: none); ``labels`` [n] int64 maps
    rows to ids (-1: a removed row, skipped; default: the rows themselves). metric "l2" (squared) or "ip".
    """
    vectors = _as_store(vectors)
    _check_store(vectors, queries, labels, sq8)
    n = vectors.shape[0]
    checks.tensor(candidates, "candidates", 2, (torch.int64,))
    if candidates.shape[0] != queries.shape[0]:
        raise ValueError(f"candidates must be [Q = {queries.shape[0]}, kc], got {tuple(candidates.shape)}")
    k = checks.topk_k(k)
    checks.metric(metric, ("l2", "ip"))
    args = (queries, vectors, candidates, k, metric, labels, sq8)
    impl = registry.choose("refine_topk", registry.device_type(queries), args)[1]
    if candidates.numel() and not getattr(impl, "checks_candidates", False) and \
            not (int(candidates.min()) >= -1 and int(candidates.max()) < n):
        raise ValueError(f"candidates must be rows in [-1, {n})")
    return impl(*args)
