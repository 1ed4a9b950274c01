"""What PQIndex and IVFPQIndex share: argument checks, id bookkeeping, k-means training of PQ codebooks."""

from __future__ import annotations

import numpy as np
import torch

from .. import ops

INDEX_METRICS = ("l2", "ip")


def as_matrix(x, d: int, name: str, finite: bool = True) -> torch.Tensor:
    """float32 [n, d] from a tensor or array; NaN / inf (unless ``finite`` is False: the caller checks) and a
    wrong dimension are clear errors."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    shape = x.shape
    if len(shape) != 2 or shape[1] != d:
        raise ValueError(f"{name} must be [n, d = {d}], got shape {tuple(shape)}")
    if x.dtype is not torch.float32:
        x = x.to(torch.float32)
    if finite:
        ops.checks.finite(x, name)
    return x


def new_ids(ids, n: int, start: int) -> torch.Tensor:
    """int64 [n] ids: the given ones, or start, start + 1, ... ."""
    if ids is None:
        return torch.arange(start, start + n, dtype=torch.int64)
    t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"ids must be [n = {n}], got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"ids must be integers, got {t.dtype}")
    return t.to(torch.int64)


def check_metric(metric: str) -> str:
    if metric not in INDEX_METRICS:
        raise ValueError(f"metric must be one of {INDEX_METRICS}, got {metric!r}")
    return metric


def check_pq(d: int, M: int, nbits: int) -> int:
    """Validate a PQ layout; returns K."""
    if not isinstance(d, int) or d < 1 or not isinstance(M, int) or M < 1:
        raise ValueError(f"d and M must be positive ints, got d={d!r}, M={M!r}")
    if d % M:
        raise ValueError(f"d = {d} is not divisible into M = {M} sub-spaces")
    if nbits not in (4, 8):
        raise ValueError(f"nbits must be 4 or 8, got {nbits!r}")
    return 1 << nbits


def remove_mask(ids: torch.Tensor, remove) -> torch.Tensor:
    """bool [n]: which of ids are in remove."""
    r = torch.as_tensor(np.asarray(remove) if not isinstance(remove, torch.Tensor) else remove).to(torch.int64)
    return torch.isin(ids, r.reshape(-1))
