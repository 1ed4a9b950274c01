"""The ``triton`` backend: the kernels of ``sqret_kernels`` for CUDA tensors, and for CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``, how CI proves them correct). On the CPU it is never chosen
automatically (the interpreter is slow): force it with ``sqret.use_backend("triton")``."""

from __future__ import annotations

import os

import torch

from . import reference
from .checks import code_dtype
from .registry import mark_unavailable, register

try:
    from sqret_kernels import adc, lut, soft
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
    (float64 LUTs go to the reference), ties by smaller position, FAISS padding."""
    if table.dtype == torch.float64:
        return reference.adc_topk(table, codes, k, largest, packed)

    def scan(c: torch.Tensor, kk: int):
        if kk <= adc.FUSED_MAX_K:
            return reference.keys_to_topk(adc.adc_topk_fused(table, c, kk, largest, packed), -1.0 if largest else 1.0)
        return reference._topk_first(adc.adc_distances(table, c, packed), min(kk, c.shape[0]), largest)

    return reference.chunked_topk(table, codes, k, largest, _CHUNK, scan)


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
                "adc_topk": adc_topk,
            },
            priority={"cuda": 20, "cpu": -1},
        )
    else:
        mark_unavailable("triton", "no CUDA GPU (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)")
