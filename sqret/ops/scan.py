"""The ADC scan fused with top-k: ``adc_topk`` over codes [N, M] (8-bit, wider, packed 4-bit), fast-scan blocks
or a stream of chunks (memory-mapped databases), and ``pq_search`` (tables and scan from raw queries); the
``sqret::adc_topk`` / ``sqret::adc_topk_fastscan`` custom ops with their fake kernels."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import checks, reference, registry
from .codes import FastScanCodes
from .lut import build_lut, check_lut, largest_for


def _nan_check(impl, lut: Tensor) -> None:
    """A NaN in the LUT is an error; implementations marked ``checks_nan`` test it in their own pass."""
    if not getattr(impl, "checks_nan", False):
        checks.no_nan(lut, "lut")


def check_adc(lut, codes, k, packed) -> None:
    _, M, K = checks.lut(lut)
    checks.codes(codes, M, K, packed)
    checks.topk_k(k)
    checks.same_device(("lut", lut), ("codes", codes))


def _adc_topk_impl(
    lut: Tensor, codes: Tensor, k: int, largest: bool = False, packed: bool = False
) -> tuple[Tensor, Tensor]:
    check_adc(lut, codes, k, packed)
    checks.code_range(codes, lut.shape[2], packed)
    args = (lut, codes, k, largest, packed)
    impl = registry.choose("adc_topk", registry.device_type(lut), args)[1]
    _nan_check(impl, lut)
    return impl(*args)


_adc_topk_op = torch.library.custom_op("sqret::adc_topk", _adc_topk_impl, mutates_args=())


@_adc_topk_op.register_fake
def _(lut, codes, k, largest=False, packed=False):
    check_adc(lut, codes, k, packed)
    vd = torch.float64 if lut.dtype == torch.float64 else torch.float32
    Q = lut.shape[0]
    return lut.new_empty((Q, k), dtype=vd), lut.new_empty((Q, k), dtype=torch.int64)


# ---------------------------------------------------------------- adc_topk over fast-scan blocks (4-bit)


def check_fastscan(lut, blocks, n, k) -> None:
    _, M, K = checks.lut(lut)
    check_blocks(blocks, n, M, K)
    checks.topk_k(k)
    checks.same_device(("lut", lut), ("blocks", blocks))


def check_blocks(blocks, n: int, M: int, K: int) -> None:
    """Fast-scan blocks holding n codes of M sub-spaces (K must be 16)."""
    if K != 16:
        raise ValueError(f"fast-scan codes need K = 16 codewords, got K = {K}")
    B = reference.FASTSCAN_BLOCK
    nb = (n + B - 1) // B
    if type(blocks) is Tensor and blocks.dtype is torch.uint8 and blocks.shape == (nb, M, B // 2):
        return
    checks.tensor(blocks, "blocks", 3, (torch.uint8,))
    if tuple(blocks.shape) != (nb, M, B // 2):
        want, got = (nb, M, B // 2), tuple(blocks.shape)
        raise ValueError(f"fast-scan blocks for n = {n} codes, M = {M} must be {list(want)}, got {list(got)}")


def _adc_topk_fastscan_impl(
    lut: Tensor, blocks: Tensor, n: int, k: int, largest: bool = False, exact: bool = True
) -> tuple[Tensor, Tensor]:
    check_fastscan(lut, blocks, n, k)
    args = (lut, blocks, n, k, largest, exact)
    impl = registry.choose("adc_topk_fastscan", registry.device_type(lut), args)[1]
    _nan_check(impl, lut)
    return impl(*args)


_adc_topk_fastscan_op = torch.library.custom_op("sqret::adc_topk_fastscan", _adc_topk_fastscan_impl, mutates_args=())


@_adc_topk_fastscan_op.register_fake
def _(lut, blocks, n, k, largest=False, exact=True):
    check_fastscan(lut, blocks, n, k)
    Q = lut.shape[0]
    return lut.new_empty((Q, k), dtype=torch.float32), lut.new_empty((Q, k), dtype=torch.int64)


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
    k = checks.topk_k(k)  # numpy integers too; the op checks the rest
    exact = _flag(exact, "exact")
    if check_finite:
        checks.lut(lut)
        checks.finite(lut, "lut")
    if isinstance(codes, FastScanCodes):
        scan = registry.direct("adc_topk_fastscan", _adc_topk_fastscan_impl)
        v, pos = scan(lut, codes.blocks.to(lut.device), codes.n, k, largest, exact)
        total = codes.n
    elif isinstance(codes, (Tensor, np.ndarray)):
        scan = registry.direct("adc_topk", _adc_topk_impl)
        v, pos = scan(lut, _as_tensor(codes, "codes", lut.device), k, largest, packed)
        total = codes.shape[0]
    else:
        v, pos, total = _stream_topk(lut, codes, k, largest, packed)
    return v, _map_ids(pos, ids, total)


def _map_ids(pos: Tensor, ids: CodesLike | None, total: int) -> Tensor:
    """Positions [Q, k] (-1: none) -> labels ids[pos] (int64 [total]); positions themselves when ids is None."""
    return reference.map_labels(pos, _labels(ids, total, pos))


def _labels(ids: CodesLike | None, total: int, like: Tensor) -> Tensor | None:
    """ids as an int64 tensor [total] on like's device (None stays None)."""
    if ids is None:
        return None
    if type(ids) is Tensor and ids.dtype is torch.int64 and ids.shape == (total,) and ids.is_cpu and like.is_cpu:
        return ids  # the common case, without a copy or a device object
    labels = _as_tensor(ids, "ids", like.device)
    if labels.dtype != torch.int64 or labels.dim() != 1 or labels.shape[0] != total:
        raise ValueError(
            f"ids must be int64 [N = {total}], got {str(labels.dtype).replace('torch.', '')} {tuple(labels.shape)}"
        )
    return labels


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
    (what single queries and small databases need); elsewhere this is those two ops. ``exact`` as adc_topk;
    ``check_finite``: NaN / inf in queries or codebooks is a ValueError. Every argument is validated here,
    once (no backend checks again).
    """
    M, K, _ = check_lut(queries, codebooks, metric)
    if type(exact) is not bool:
        _flag(exact, "exact")
    if type(k) is not int or k < 1:
        k = checks.topk_k(k)
    fast = type(codes) is FastScanCodes
    if fast or (type(codes) is Tensor and not packed):  # tables and scan in one backend call where one has it
        if fast:
            data, n, total = codes.blocks, codes.n, codes.n
            check_blocks(data, n, M, K)
        else:
            checks.codes(codes, M, K, False)
            data, n, total = codes, None, codes.shape[0]
        if not (queries.is_cpu and data.is_cpu):
            checks.same_device(("queries", queries), ("codes", data))
        ids = _labels(ids, total, queries)
        args = (queries, codebooks, data, n, k, metric, exact, ids, check_finite)
        name, impl = registry.choose("pq_search", registry.device_type(queries), args)
        if name != "reference":  # else the composition below, which checks the range of the codes itself
            if not fast:
                checks.code_range(data, K, False)
            return impl(*args)
    lut = build_lut(queries, codebooks, metric, check_finite=check_finite)
    return adc_topk(lut, codes, k, largest=largest_for(metric), packed=packed, ids=ids, check_finite=check_finite,
                    exact=exact)


def _flag(v: object, name: str) -> bool:
    if type(v) is not bool:
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def _stream_topk(lut, chunks, k, largest, packed):
    checks.lut(lut)  # before any chunk (there may be none)
    Q = lut.shape[0]
    vd = reference.topk_dtype(lut)
    best_v = torch.empty((Q, 0), dtype=vd, device=lut.device)
    best_i = torch.empty((Q, 0), dtype=torch.int64, device=lut.device)
    offset = 0
    for j, chunk in enumerate(chunks):
        c = _as_tensor(chunk, f"codes chunk {j}", lut.device)
        n = c.shape[0] if c.dim() else 0
        if n:
            v, i = registry.direct("adc_topk", _adc_topk_impl)(lut, c, min(k, n), largest, packed)
            best_v, best_i = reference.merge_topk(best_v, best_i, v, i + offset, k, largest)
        else:  # still validate an empty chunk's structure
            check_adc(lut, c, k, packed)
        offset += n
    v, i = reference.pad_topk(best_v, best_i, k, largest)
    return v, i, offset
