"""Argument validation shared by the ops (structural checks run in fake kernels too)."""

from __future__ import annotations

import math

import numpy as np
import torch

METRICS = ("l2", "ip", "cos")
LUT_METRICS = METRICS + ("l2_sqrt",)  # l2_sqrt: SPQ/HQC score, the sum of non-squared sub-distances
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # the common first: `in` stops there
CODE_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def code_dtype(K: int) -> torch.dtype:
    """The smallest codes dtype that holds K codewords: uint8 up to 256, then int16, then int32."""
    if K <= 256:
        return torch.uint8
    return torch.int16 if K <= 32768 else torch.int32


def tensor(t: object, name: str, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if isinstance(t, torch.Tensor) and t.ndim == ndim and t.dtype in dtypes:  # the common case, in one test
        return t
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")
    return t


def same_device(*named: tuple[str, torch.Tensor]) -> None:
    for _, t in named:
        if not t.is_cpu:
            break
    else:  # all on the CPU: no device objects built (they cost a tenth of a microsecond each)
        return
    first = named[0][1].device
    for _, t in named[1:]:
        if t.device != first:
            desc = ", ".join(f"{n} on {t.device}" for n, t in named)
            raise ValueError(f"tensors must be on one device: {desc}")


def metric(m: object, allowed: tuple[str, ...] = METRICS) -> str:
    if m not in allowed:
        raise ValueError(f"metric must be one of {allowed}, got {m!r}")
    return m  # type: ignore[return-value]


def codebooks(c: object) -> tuple[int, int, int]:
    tensor(c, "codebooks", 3, FLOATS)
    M, K, dsub = c.shape  # type: ignore[union-attr]
    if M < 1 or K < 1 or dsub < 1:
        raise ValueError(f"codebooks must be [M, K, dsub] with M, K, dsub >= 1, got {tuple(c.shape)}")  # type: ignore[union-attr]
    return M, K, dsub


def features(x: object, cb: torch.Tensor, name: str = "x") -> tuple[int, int, int]:
    """x [B, d] against codebooks [M, K, dsub]: d must equal M * dsub. Returns (M, K, dsub)."""
    T = torch.Tensor  # accepted in one go (each attribute read once: a search of one query takes microseconds)
    if type(x) is T and type(cb) is T and x.is_cpu and cb.is_cpu and x.dtype in FLOATS and cb.dtype in FLOATS:
        xs, cs = x.shape, cb.shape
        if len(xs) == 2 and len(cs) == 3:
            M, K, dsub = cs
            if xs[1] == M * dsub and M > 0 and K > 0 and dsub > 0:
                return M, K, dsub
    M, K, dsub = codebooks(cb)
    tensor(x, name, 2, FLOATS)
    if x.shape[1] != M * dsub:  # type: ignore[union-attr]
        raise ValueError(
            f"{name} has d = {x.shape[1]} features, but codebooks of shape [M={M}, K={K}, dsub={dsub}] "  # type: ignore[union-attr]
            f"need d = M * dsub = {M * dsub}"
        )
    same_device((name, x), ("codebooks", cb))  # type: ignore[arg-type]
    return M, K, dsub


def temperature(tau: object) -> float:
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(tau)


def packed_width(M: int) -> int:
    return (M + 1) // 2


def codes(c: object, M: int, K: int, packed: bool, name: str = "codes") -> None:
    """Structure of codes [N, M] (or packed 4-bit [N, ceil(M/2)] uint8) for M sub-spaces of K codewords."""
    tensor(c, name, 2, CODE_DTYPES)
    if packed:
        if c.dtype != torch.uint8:  # type: ignore[union-attr]
            raise TypeError(f"packed 4-bit {name} must be uint8, got {c.dtype}")  # type: ignore[union-attr]
        if K != 16:
            raise ValueError(f"packed 4-bit {name} need K = 16 codewords, got K = {K}")
        if c.shape[1] != packed_width(M):  # type: ignore[union-attr]
            raise ValueError(
                f"packed 4-bit {name} for M = {M} must be [N, {packed_width(M)}], got {tuple(c.shape)}"  # type: ignore[union-attr]
            )
    elif c.shape[1] != M:  # type: ignore[union-attr]
        raise ValueError(f"{name} must be [N, M = {M}], got {tuple(c.shape)}")  # type: ignore[union-attr]


def code_range(c: torch.Tensor, K: int, packed: bool, name: str = "codes") -> None:
    """Data check: every code in [0, K). Free for uint8 codes with K = 256 and packed codes."""
    if packed or c.numel() == 0:
        return
    if c.dtype == torch.uint8 and K >= 256:
        return
    lo, hi = int(c.min()), int(c.max())
    if lo < 0 or hi >= K:
        raise ValueError(f"{name} must lie in [0, K = {K}), found values in [{lo}, {hi}]")


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


try:
    from .._cpu import has_nonfinite as _has_nonfinite
except ImportError:
    _has_nonfinite = None


def finite(t: torch.Tensor, name: str) -> None:
    """Data check: no NaN or inf in t (on the CPU natively for contiguous float32 — a NumPy or torch pass costs
    a following search more than itself —, else through NumPy: many times faster than torch.isfinite there)."""
    if not t.is_floating_point() or not t.numel():
        return
    if _has_nonfinite is not None and t.dtype is torch.float32 and t.is_cpu and t.is_contiguous():
        ok = not _has_nonfinite(t.data_ptr(), t.numel())
    elif t.is_cpu and t.dtype in _NUMPY_FLOATS and not t.requires_grad:
        ok = bool(np.isfinite(t.numpy()).all())
    else:
        ok = bool(torch.isfinite(t).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")


def no_nan(t: torch.Tensor, name: str) -> None:
    """Data check: no NaN in t (inf is allowed)."""
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")


def lut(t: object) -> tuple[int, int, int]:
    tensor(t, "lut", 3, FLOATS)
    return tuple(t.shape)  # type: ignore[union-attr,return-value]


def topk_k(k: object) -> int:
    if type(k) is int and k >= 1:
        return k
    if isinstance(k, torch.SymInt):  # traced by torch.compile: checked when it is concrete
        return k  # type: ignore[return-value]
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k
