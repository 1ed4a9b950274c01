"""sqret's ops: the only layer that chooses a backend. Everything above calls these functions.

Shapes: ``x`` [B, D] with D = M * d, ``codebooks`` [M, K, d], ``codes`` [N, M] (uint8 for K <= 256, else
int16/int32; packed 4-bit [N, ceil(M/2)] uint8 when ``packed=True``), ``lut`` [Q, M, K].
Metrics: ``"l2"`` (squared Euclidean, smaller is closer), ``"ip"`` (inner product, larger is closer),
``"cos"`` (cosine of normalized sub-vectors and codewords, larger is closer); ``build_lut`` also takes
``"l2_sqrt"``: per sub-space Euclidean distance, whose sum is the SPQ/HQC ranking score.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import checks, library, reference, registry
from .checks import LUT_METRICS, METRICS, code_dtype
from .ivf import InvertedLists, coarse_probe, ivf_precomputed_table, ivf_search
from .refine import refine_topk, sq8_decode, sq8_encode, sq8_train
from .registry import BackendInfo, backends, get_backend, register, select, set_backend, use_backend

register(
    "reference",
    ("*",),
    {
        name: getattr(reference, name)
        for name in (
            "soft_quantize",
            "soft_quantize_backward",
            "assign_probs",
            "assign_probs_backward",
            "encode",
            "decode",
            "decode_backward",
            "build_lut",
            "adc_topk",
            "adc_topk_fastscan",
            "ivf_search",
            "smallest_k_rows",
            "refine_topk",
            "pq_search",
            "pq_search_whole",
        )
    },
    priority=0,
)
# the optional backends register themselves (cpu_native / cuda when built, triton when it can run)
from . import cpu_native, cuda_backend, triton_backend  # noqa: E402,F401

__all__ = [
    "BackendInfo",
    "FastScanCodes",
    "InvertedLists",
    "fastscan_pack",
    "fastscan_unpack",
    "LUT_METRICS",
    "METRICS",
    "adc_topk",
    "assign_probs",
    "backends",
    "build_lut",
    "code_dtype",
    "coarse_probe",
    "codeword_tables",
    "decode",
    "encode",
    "get_backend",
    "ivf_precomputed_table",
    "ivf_search",
    "largest_for",
    "pack4",
    "pq_search",
    "refine_topk",
    "residual_decode",
    "residual_encode",
    "select",
    "set_backend",
    "soft_quantize",
    "sq8_decode",
    "sq8_encode",
    "sq8_train",
    "unpack4",
    "use_backend",
]


def largest_for(metric: str) -> bool:
    """Whether larger scores are closer for ``metric`` (ip, cos) or smaller (l2, l2_sqrt)."""
    return checks.metric(metric, LUT_METRICS) in ("ip", "cos")


def soft_quantize(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft product quantization z [B, D] of x [B, D]: per sub-space softmax(s(x_m, c) / tau) @ C_m.

    Differentiable w.r.t. ``x`` and ``codebooks``; the backward recomputes the probabilities, so only
    x and codebooks are saved. For ``"cos"`` the codewords are L2-normalized before use.
    """
    library.check_soft(x, codebooks, tau, metric)
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return torch.ops.sqret.soft_quantize(x, codebooks, tau, metric)


def assign_probs(
    x: Tensor, codebooks: Tensor, tau: float = 1.0, metric: str = "l2", *, check_finite: bool = False
) -> Tensor:
    """Soft assignment probabilities p [B, M, K] = softmax(s(x_m, c_mk) / tau). Differentiable."""
    library.check_soft(x, codebooks, tau, metric)
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return torch.ops.sqret.assign_probs(x, codebooks, tau, metric)


def encode(x: Tensor, codebooks: Tensor, metric: str = "l2", *, check_finite: bool = False) -> Tensor:
    """Hard assignment codes [B, M] (dtype :func:`code_dtype` (K)); ties go to the smaller index."""
    library.check_encode(x, codebooks, metric)
    if check_finite:
        checks.finite(x, "x"), checks.finite(codebooks, "codebooks")
    return library.direct("encode")(x, codebooks, metric)


def decode(codes: Tensor, codebooks: Tensor, *, packed: bool = False) -> Tensor:
    """Reconstruction [N, D] of codes [N, M] (or packed 4-bit). Differentiable w.r.t. codebooks."""
    library.check_decode(codes, codebooks, packed)
    return torch.ops.sqret.decode(codes, codebooks, packed)


def build_lut(
    queries: Tensor,
    codebooks: Tensor,
    metric: str = "l2",
    *,
    dtype: torch.dtype | None = None,
    check_finite: bool = False,
) -> Tensor:
    """Distance tables lut [Q, M, K] for asymmetric distance computation (float32 unless ``dtype``)."""
    library.check_lut(queries, codebooks, metric)
    if check_finite:
        checks.finite(queries, "queries"), checks.finite(codebooks, "codebooks")
    return library.direct("build_lut")(queries, codebooks, metric, dtype)


def residual_encode(x: Tensor, codebooks: Tensor) -> Tensor:
    """Residual (progressive) codes [B, L] of x [B, d] over codebooks [L, K, d]: level l encodes what the
    levels before it left (nearest codeword, l2)."""
    r, codes = x, []
    for level in range(codebooks.shape[0]):
        C = codebooks[level : level + 1]
        c = encode(r, C)
        r = r - decode(c, C)
        codes.append(c)
    return torch.cat(codes, 1) if codes else torch.empty(x.shape[0], 0, dtype=code_dtype(codebooks.shape[1]))


def residual_decode(codes: Tensor, codebooks: Tensor) -> Tensor:
    """Reconstructions [B, d] of residual codes [B, l] (the first l levels of codebooks [L, K, d]);
    differentiable w.r.t. the codebooks."""
    out = torch.zeros(codes.shape[0], codebooks.shape[2], dtype=codebooks.dtype, device=codebooks.device)
    for level in range(codes.shape[1]):
        out = out + decode(codes[:, level : level + 1], codebooks[level : level + 1])
    return out


def codeword_tables(codebooks: Tensor, metric: str = "l2") -> Tensor:
    """Codeword-to-codeword tables [M, K, K] (squared l2 or inner product per sub-space) for symmetric
    distance computation: row ``c`` of table ``m`` is the LUT of a query whose code in sub-space m is c."""
    M, K, _ = checks.codebooks(codebooks)
    metric = checks.metric(metric)
    C = codebooks.float()
    if metric == "cos":
        C = torch.nn.functional.normalize(C, dim=-1)
    ip = C @ C.transpose(1, 2)
    if metric != "l2":
        return ip
    n = (C * C).sum(-1)
    return (n[:, :, None] + n[:, None, :] - 2 * ip).clamp_min_(0)


def pack4(codes: Tensor) -> Tensor:
    """Codes [N, M] with values in [0, 16) -> packed 4-bit [N, ceil(M/2)] uint8: sub-space 2j in the low
    nibble of byte j, 2j+1 in the high nibble (odd M leaves the last high nibble 0)."""
    checks.tensor(codes, "codes", 2, checks.CODE_DTYPES)
    checks.code_range(codes, 16, False)
    return reference.pack4(codes)


def unpack4(codes: Tensor, M: int) -> Tensor:
    """Packed 4-bit codes [N, ceil(M/2)] uint8 -> codes [N, M] uint8 (the inverse of :func:`pack4`)."""
    checks.tensor(codes, "codes", 2, (torch.uint8,))
    if type(M) is not int or M < 1:
        raise ValueError(f"M must be an int >= 1, got {M!r}")
    if codes.shape[1] != checks.packed_width(M):
        raise ValueError(f"packed 4-bit codes for M = {M} must be [N, {checks.packed_width(M)}], "
                         f"got {tuple(codes.shape)}")
    return reference.unpack4(codes, M)


@dataclass(frozen=True)
class FastScanCodes:
    """4-bit codes in the fast-scan layout: ``blocks`` [ceil(n/64), M, 32] uint8 hold n codes; byte j of
    (block b, sub-space m) has vector 64b+j in its low nibble and vector 64b+32+j in its high nibble.
    Searching this layout needs no per-call conversion (the CPU kernel shuffles 64 codes at a time)."""

    blocks: Tensor
    n: int

    def __len__(self) -> int:
        return self.n


def fastscan_pack(codes: Tensor) -> FastScanCodes:
    """Codes [N, M] with values in [0, 16) (use :func:`unpack4` first for packed codes) -> FastScanCodes."""
    checks.tensor(codes, "codes", 2, checks.CODE_DTYPES)
    checks.code_range(codes, 16, False)
    return FastScanCodes(reference.fastscan_pack(codes.to(torch.uint8), codes.shape[1]), codes.shape[0])


def fastscan_unpack(codes: FastScanCodes) -> Tensor:
    """FastScanCodes -> codes [N, M] uint8."""
    return reference.fastscan_unpack(codes.blocks, codes.n)


CodesLike = Tensor | np.ndarray


def _as_tensor(a: CodesLike, name: str, device: torch.device) -> Tensor:
    if isinstance(a, np.ndarray):
        with warnings.catch_warnings():  # read-only memmaps: we never write to them
            warnings.simplefilter("ignore", UserWarning)
            a = torch.as_tensor(a)
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    return a.to(device, non_blocking=True)


def adc_topk(
    lut: Tensor,
    codes: CodesLike | FastScanCodes | Sequence[CodesLike] | Iterable[CodesLike],
    k: int,
    *,
    largest: bool = False,
    packed: bool = False,
    ids: CodesLike | None = None,
    check_finite: bool = False,
    exact: bool = True,
) -> tuple[Tensor, Tensor]:
    """Best k database entries per query by ADC: score(q, n) = sum_m lut[q, m, codes[n, m]].

    ``codes`` is one tensor / array [N, M], a :class:`FastScanCodes`, or a sequence (or iterable) of
    chunks, e.g. slices of a ``numpy.memmap``, streamed through the device with a running top-k.
    Returns ``(values [Q, k], ids [Q, k] int64)`` sorted best first (ascending unless ``largest``), ties
    by smaller position; places beyond N hold id -1 and value +inf (-inf when ``largest``).
    ``ids`` (int64 [N]) maps positions to labels. ``exact=False`` scores :class:`FastScanCodes` by their
    quantized distances (the fast scan's approximate mode, as FAISS's and ScaNN's: see
    ``reference.quantize_lut``); other codes are always scored exactly.
    """
    _, M, K = checks.lut(lut)
    k = checks.topk_k(k)
    exact = _flag(exact, "exact")
    if check_finite:
        checks.finite(lut, "lut")
    if isinstance(codes, FastScanCodes):
        v, pos = library.direct("adc_topk_fastscan")(lut, codes.blocks.to(lut.device), codes.n, k, largest, exact)
        total = codes.n
    elif isinstance(codes, (Tensor, np.ndarray)):
        v, pos = library.direct("adc_topk")(lut, _as_tensor(codes, "codes", lut.device), k, largest, packed)
        total = codes.shape[0]
    else:
        v, pos, total = _stream_topk(lut, codes, k, largest, packed)
    return v, _map_ids(pos, ids, total)


def _map_ids(pos: Tensor, ids: CodesLike | None, total: int) -> Tensor:
    """Positions [Q, k] (-1: none) -> labels ids[pos] (int64 [total]); positions themselves when ids is None."""
    if ids is None:
        return pos
    labels = _as_tensor(ids, "ids", pos.device)
    if labels.dtype != torch.int64 or labels.dim() != 1 or labels.shape[0] != total:
        raise ValueError(
            f"ids must be int64 [N = {total}], got {str(labels.dtype).replace('torch.', '')} {tuple(labels.shape)}"
        )
    mapped = labels[pos.clamp_min(0)] if total else torch.full_like(pos, -1)
    return torch.where(pos >= 0, mapped, torch.full_like(mapped, -1))


def pq_search(
    queries: Tensor,
    codebooks: Tensor,
    codes: CodesLike | FastScanCodes | Sequence[CodesLike] | Iterable[CodesLike],
    k: int,
    metric: str = "l2",
    *,
    packed: bool = False,
    ids: CodesLike | None = None,
    check_finite: bool = False,
    exact: bool = True,
) -> tuple[Tensor, Tensor]:
    """Best k codes per raw query [Q, D] by ADC: the result of
    ``adc_topk(build_lut(queries, codebooks, metric), codes, k, largest=largest_for(metric), ...)``.

    The native CPU backend builds the tables inside the scan, in one call and without a [Q, M, K] tensor
    (what single queries and small databases need); elsewhere this is those two ops. ``exact`` as adc_topk.
    """
    if not packed and type(queries) is Tensor and type(exact) is bool:  # one call if the backend takes them as is
        fast = type(codes) is FastScanCodes
        if fast or type(codes) is Tensor:
            whole = registry.select("pq_search_whole", registry.device_type(queries))[1]
            out = whole(queries, codebooks, codes.blocks if fast else codes, codes.n if fast else None, k, metric,
                        ids, check_finite, exact)
            if out is not None:
                return out
    M, K, _ = library.check_lut(queries, codebooks, metric)
    exact = _flag(exact, "exact")
    fused = isinstance(codes, FastScanCodes) or (isinstance(codes, Tensor) and not packed)
    name, impl = registry.select("pq_search", registry.device_type(queries))
    if fused and name != "reference":  # the reference is the composition below, op by op on the best backend
        k = checks.topk_k(k)
        if check_finite:
            checks.finite(queries, "queries"), checks.finite(codebooks, "codebooks")
        if isinstance(codes, FastScanCodes):
            data, n, total = codes.blocks, codes.n, codes.n
            library.check_blocks(data, n, M, K)
        else:
            data, n, total = codes, None, codes.shape[0]
            checks.codes(codes, M, K, False)
            checks.code_range(codes, K, False)
        checks.same_device(("queries", queries), ("codes", data))
        out = impl(queries, codebooks, data, n, k, metric, exact)
        if out is not NotImplemented:
            return out[0], _map_ids(out[1], ids, total)
    lut = build_lut(queries, codebooks, metric, check_finite=check_finite)
    return adc_topk(lut, codes, k, largest=largest_for(metric), packed=packed, ids=ids, check_finite=check_finite,
                    exact=exact)


def _flag(v: object, name: str) -> bool:
    if type(v) is not bool:
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def _stream_topk(lut, chunks, k, largest, packed):
    Q = lut.shape[0]
    vd = reference.topk_dtype(lut)
    best_v = torch.empty((Q, 0), dtype=vd, device=lut.device)
    best_i = torch.empty((Q, 0), dtype=torch.int64, device=lut.device)
    offset = 0
    for j, chunk in enumerate(chunks):
        c = _as_tensor(chunk, f"codes chunk {j}", lut.device)
        n = c.shape[0] if c.dim() else 0
        if n:
            v, i = library.direct("adc_topk")(lut, c, min(k, n), largest, packed)
            best_v, best_i = reference.merge_topk(best_v, best_i, v, i + offset, k, largest)
        else:  # still validate an empty chunk's structure
            library.check_adc(lut, c, k, packed)
        offset += n
    v, i = reference.pad_topk(best_v, best_i, k, largest)
    return v, i, offset
