"""The ``cuda`` backend: ADC scan + top-k, encode and soft quantization (forward and backward) from
``sqret._cuda`` (csrc/cuda, nvcc + pybind11), for CUDA tensors. Unavailable, with the reason, when the module
was not built or there is no GPU.

Soft quantization has two GPU implementations (this one and the Triton kernel). Which one the automatic choice
tries first is a registry policy decided by measurement: ``benchmarks/gpu_check.sh`` times both and writes
``soft_policy.json`` beside this file (shape -> winner); a shape takes the winner of the nearest measured shape.
Without measurements the Triton kernel stays the default. ``SQRET_CUDA_SOFT=cuda|triton`` overrides the policy;
``sqret.use_backend("cuda")`` runs this kernel wherever it accepts the shape.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from . import reference
from .checks import code_dtype
from .registry import Impl, declines_float64, mark_unavailable, register, set_policy

try:
    from .. import _cuda
except ImportError as err:
    _cuda = None
    mark_unavailable("cuda", f"native extension sqret._cuda is not built (no nvcc at install time?): {err}")

MAX_K = 1024  # the streaming scan's largest top-k (csrc/cuda kAdcMaxKeep); above, the next implementation
WARP_MAX_K = 256  # the warp-select variant's; above, the block variant
_CHUNK = 1 << 30  # codes per launch (positions in a key are 32-bit)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _adc_accepts(table: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool) -> str | None:
    if why := declines_float64(table):
        return why
    if codes.dtype != torch.uint8:
        return f"codes of dtype {codes.dtype}: the kernel reads uint8"
    if min(k, codes.shape[0]) > MAX_K:
        return f"k = {k} > {MAX_K}, the kernel's largest"
    return None


def adc_select(k: int) -> int:
    """The streaming scan's top-k variant: 0, a pool per block and query (the default), or 1, warp select (a pool
    per warp and query, k <= WARP_MAX_K), chosen by ``SQRET_CUDA_ADC=block|warp`` until a GPU has measured both
    (benchmarks/test_gpu_bench.py runs both)."""
    want = os.environ.get("SQRET_CUDA_ADC", "block")
    if want not in ("block", "warp"):
        raise ValueError(f"SQRET_CUDA_ADC must be 'block' or 'warp', got {want!r}")
    return 1 if want == "warp" and k <= WARP_MAX_K else 0


def traffic(Q: int, M: int, K: int, N: int, code_bytes: int, k: int, *, sms: int = 132,
            max_smem: int = 227 * 1024, select: int = 0) -> dict:
    """Bytes one streaming scan launch moves on a GPU with ``sms`` SMs (the model the benchmark report prints):
    codes read once from DRAM (the query blocks of a slice run side by side and share it through L2; they
    read it ``code_passes`` times from L2), the keys the programs write, and the merge (keys read, result
    written)."""
    kk = min(k, N)
    plan = _cuda.adc_plan(Q, M, K, N, kk, sms, max_smem, select)
    keys = Q * plan["programs"] * kk * 8
    merge = keys + Q * kk * 8 if plan["programs"] > 1 else 0
    codes = N * code_bytes
    return {"codes_read": codes, "code_passes": -(-Q // plan["qb"]), "keys_written": keys, "merge": merge,
            "overhead": (keys + merge) / max(codes, 1), "plan": plan}


def adc_topk(table: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool):
    lut = table.to(torch.float32).contiguous()
    Q, M, K = lut.shape

    def scan(c: torch.Tensor, kk: int):
        c = c.contiguous()
        select = adc_select(kk)
        programs = _cuda.adc_programs(Q, M, K, c.shape[0], kk, select)
        keys = torch.empty((Q, programs * kk), dtype=torch.int64, device=lut.device)
        _cuda.adc_topk_stream(lut.data_ptr(), Q, M, K, c.data_ptr(), c.shape[0], c.shape[1], packed, largest, kk,
                              programs, keys.data_ptr(), _stream(), select)
        if programs > 1:
            keys = keys.sort(dim=1).values[:, :kk]
        return reference.keys_to_topk(keys, -1.0 if largest else 1.0)

    return reference.chunked_topk(lut, codes, k, largest, _CHUNK, scan)


def encode(x: torch.Tensor, codebooks: torch.Tensor, metric: str) -> torch.Tensor:
    M, K, d = codebooks.shape
    C = codebooks.to(torch.float32)
    if metric == "cos":
        C = torch.nn.functional.normalize(C, dim=-1)
    xs, C = x.to(torch.float32).contiguous(), C.contiguous()
    out = torch.empty((x.shape[0], M), dtype=torch.int32, device=x.device)
    _cuda.encode(xs.data_ptr(), x.shape[0], C.data_ptr(), M, K, d, 0 if metric == "l2" else 1, out.data_ptr(),
                 _stream())
    return out.to(code_dtype(K))


POLICY_FILE = Path(__file__).with_name("soft_policy.json")


def _load_policy() -> list[dict]:
    try:
        return json.loads(POLICY_FILE.read_text())["shapes"]
    except (OSError, ValueError, KeyError):
        return []


_POLICY = _load_policy()


def soft_impl(B: int, M: int, K: int, d: int) -> str:
    """"cuda" or "triton": the measured winner of the nearest shape (log-distance), Triton when unmeasured."""
    forced = os.environ.get("SQRET_CUDA_SOFT", "auto")
    if forced in ("cuda", "triton"):
        return forced
    if not _POLICY:
        return "triton"
    key = [math.log2(max(v, 1)) for v in (B, M, K, d)]
    best = min(_POLICY, key=lambda r: sum((a - math.log2(max(r[n], 1))) ** 2 for a, n in zip(key, "BMKd", strict=True)))
    return best["winner"]


def _soft_accepts(x: torch.Tensor, codebooks: torch.Tensor, *_) -> str | None:
    if why := declines_float64(x, codebooks):
        return why
    if codebooks.shape[2] > _cuda.soft_max_dim:
        return f"dsub = {codebooks.shape[2]} > {_cuda.soft_max_dim}, the kernel's largest"
    return None


def _prefer_forward(x: torch.Tensor, codebooks: torch.Tensor, *_) -> str:
    return soft_impl(x.shape[0], *codebooks.shape)


def _soft_forward(x, codebooks, tau: float, metric: str):
    xs, C = reference.kernel_inputs(x, codebooks, metric)
    M, K, d = C.shape
    z = torch.empty_like(xs)
    _cuda.soft_quantize(xs.data_ptr(), xs.shape[0], C.data_ptr(), M, K, d, float(tau), 0 if metric == "l2" else 1,
                        z.data_ptr(), _stream())
    return z.to(x.dtype)


def _soft_backward(grad, x, codebooks, tau: float, metric: str):
    xs, C = reference.kernel_inputs(x, codebooks, metric)
    g = grad.float().contiguous()
    (B, _), (M, K, d) = xs.shape, C.shape
    gx, gc = torch.empty_like(xs), torch.empty_like(C)
    scratch = torch.empty(2 * B * M, dtype=torch.float32, device=x.device)
    _cuda.soft_quantize_backward(g.data_ptr(), xs.data_ptr(), B, C.data_ptr(), M, K, d, float(tau),
                                 0 if metric == "l2" else 1, gx.data_ptr(), gc.data_ptr(), scratch.data_ptr(),
                                 _stream())
    if metric == "cos":  # gradients w.r.t. the normalized inputs -> w.r.t. the raw ones
        gx, gc = reference.cosine_backward(x, codebooks, gx, gc)
    return gx.to(x.dtype), gc.to(codebooks.dtype)


if _cuda is not None:
    if _cuda.device_count() > 0 and torch.cuda.is_available():
        register("cuda", ("cuda",), {
            "adc_topk": Impl(adc_topk, _adc_accepts),
            "encode": encode,
            "soft_quantize": Impl(_soft_forward, _soft_accepts),
            "soft_quantize_backward": Impl(_soft_backward, lambda grad, x, codebooks, *_: _soft_accepts(x, codebooks)),
        }, priority={"cuda": 30})
        set_policy("soft_quantize", _prefer_forward)
        set_policy("soft_quantize_backward", lambda grad, x, codebooks, *_: _prefer_forward(x, codebooks))
    else:
        mark_unavailable("cuda", "sqret._cuda is built, but there is no CUDA GPU on this machine")
