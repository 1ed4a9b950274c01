"""The ``triton`` backend: the kernels of ``sqret_kernels`` for CUDA tensors, and for CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``, how CI proves them correct). On the CPU it is never chosen
automatically (the interpreter is slow): force it with ``sqret.use_backend("triton")``."""

from __future__ import annotations

import os

import torch

from . import reference
from .checks import code_dtype
from .registry import Impl, declines_float64, mark_unavailable, register

try:
    from sqret_kernels import adc, ivf, lut, soft
except Exception as err:  # triton missing or broken
    soft = None
    mark_unavailable("triton", f"Triton kernels cannot be imported ({type(err).__name__}: {err})")

_CHUNK = 1 << 24  # codes per launch on the multi-pass path (and below 2**31 positions per launch)


def _cos(x, codebooks):
    """Cosine runs as the inner product of normalized inputs (normalized in float32)."""
    return reference.cosine_inputs(x.float(), codebooks.float())


def soft_quantize(x, codebooks, tau: float, metric: str):
    if metric == "cos":
        return soft.soft_quantize(*_cos(x, codebooks), tau, "ip").to(x.dtype)
    return soft.soft_quantize(x, codebooks, tau, metric)


def assign_probs(x, codebooks, tau: float, metric: str):
    if metric == "cos":
        return soft.assign_probs(*_cos(x, codebooks), tau, "ip").to(x.dtype)
    return soft.assign_probs(x, codebooks, tau, metric)


def _backward(kernel_backward, grad, x, codebooks, tau: float, metric: str):
    if metric != "cos":
        return kernel_backward(grad, x, codebooks, tau, metric)
    gx, gc = kernel_backward(grad, *_cos(x, codebooks), tau, "ip")  # w.r.t. the normalized inputs
    gx, gc = reference.cosine_backward(x, codebooks, gx, gc)
    return gx.to(x.dtype), gc.to(codebooks.dtype)


def soft_quantize_backward(grad, x, codebooks, tau: float, metric: str):
    return _backward(soft.soft_quantize_backward, grad, x, codebooks, tau, metric)


def assign_probs_backward(grad, x, codebooks, tau: float, metric: str):
    return _backward(soft.assign_probs_backward, grad, x, codebooks, tau, metric)


def encode(x, codebooks, metric):
    if metric == "cos":
        x, codebooks = _cos(x, codebooks)
    return soft.encode(x, codebooks, "ip" if metric == "cos" else metric, code_dtype(codebooks.shape[1]))


def build_lut(q, codebooks, metric: str, dtype):
    if metric == "cos":
        return lut.build_lut(*_cos(q, codebooks), "ip", dtype)
    return lut.build_lut(q, codebooks, metric, dtype)


def adc_topk(table: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool):
    """Fused per-program top-k for k <= FUSED_MAX_K; else a chunked multi-pass path. Values float32
    (float64 LUTs are the reference's), ties by smaller position, FAISS padding."""
    def scan(c: torch.Tensor, kk: int):
        if kk <= adc.FUSED_MAX_K:
            return reference.keys_to_topk(adc.adc_topk_fused(table, c, kk, largest, packed), -1.0 if largest else 1.0)
        return reference._topk_first(adc.adc_distances(table, c, packed), min(kk, c.shape[0]), largest)

    return reference.chunked_topk(table, codes, k, largest, _CHUNK, scan)


_TABLE_BYTES = 256 << 20  # residual tables per query chunk of the IVF scan


def ivf_search(queries, centroids, codebooks, lists, probes, k: int, metric: str, precomputed=None, exact=True,
               by_residual=True, sorted=True):  # noqa: A002 (torch.topk's name); the results are always sorted
    """IVF-PQ search on the device of the queries: the lists copied there once (``lists.device_copy``), the
    tables built by the LUT kernel (residual tables per (query, list) for l2 by residual, one per query
    otherwise), the probed lists scanned by ``sqret_kernels.ivf``. Scores are always exact float sums (the
    quantized scoring of ``exact=False`` is the CPU fast scan's). Ties: within a list by the smaller id,
    across lists by list order."""
    dev = queries.device
    store = lists.device_copy(dev)
    Q, P = probes.shape
    M, K, _ = codebooks.shape
    largest = metric == "ip"
    q, cen, cb = queries.to(torch.float32), centroids.to(torch.float32), codebooks.to(torch.float32)
    probes = probes.to(torch.int64)
    per_pair = metric == "l2" and by_residual
    step = max(1, _TABLE_BYTES // max(1, (P if per_pair else 1) * M * K * 4))
    values, ids = [], []
    for q0 in range(0, Q, step):
        qc, pc = q[q0:q0 + step], probes[q0:q0 + step]
        near = cen[pc.clamp_min(0)]  # [Qc, P, d]
        if per_pair:
            tables = lut.build_lut((qc[:, None, :] - near).reshape(-1, q.shape[1]), cb, "l2", torch.float32)
        else:
            tables = lut.build_lut(qc, cb, metric, torch.float32)
        bias = (qc[:, None, :] * near).sum(-1) if largest and by_residual else torch.zeros(pc.shape, device=dev)
        keys = ivf.ivf_topk(tables, not per_pair, store.codes, store.packed, store.offsets, store.longest, pc,
                            bias, k, largest)
        v, pos = reference.keys_to_topk(keys, -1.0 if largest else 1.0)
        none = keys == adc.MAX_KEY
        values.append(v.masked_fill(none, float("-inf") if largest else float("inf")))
        ids.append(torch.where(none, -1, store.ids[pos.clamp(0, max(store.ids.shape[0] - 1, 0))]
                               if store.ids.numel() else torch.full_like(pos, -1)))
    if not values:
        fill = float("-inf") if largest else float("inf")
        return torch.full((0, k), fill, device=dev), torch.full((0, k), -1, dtype=torch.int64, device=dev)
    return torch.cat(values), torch.cat(ids)


def _ivf_accepts(queries, centroids, codebooks, lists, probes, k, *_) -> str | None:
    if k > adc.FUSED_MAX_K:
        return f"k = {k} > {adc.FUSED_MAX_K}, the fused scan's largest"
    return declines_float64(queries, centroids, codebooks)


def _devices() -> tuple[str, ...]:
    devices = ("cuda",) if torch.cuda.is_available() else ()
    if os.environ.get("TRITON_INTERPRET") == "1":
        devices += ("cpu",)
    return devices


if soft is not None:
    if _devices():
        register(
            "triton",
            _devices(),
            {
                "soft_quantize": soft_quantize,
                "soft_quantize_backward": soft_quantize_backward,
                "assign_probs": assign_probs,
                "assign_probs_backward": assign_probs_backward,
                "encode": encode,
                "decode": lut.decode,
                "build_lut": build_lut,
                "adc_topk": Impl(adc_topk, lambda table, *_: declines_float64(table)),
                "ivf_search": Impl(ivf_search, _ivf_accepts),
            },
            priority={"cuda": 20, "cpu": -1},
        )
    else:
        mark_unavailable("triton", "no CUDA GPU (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)")
