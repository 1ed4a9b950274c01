"""The ``cuda`` backend: ADC scan + top-k and encode from ``sqret._cuda`` (csrc/cuda, nvcc + pybind11), for
CUDA tensors. Unavailable, with the reason, when the module was not built or there is no GPU."""

from __future__ import annotations

import torch

from . import reference
from .checks import code_dtype
from .registry import mark_unavailable, register

try:
    from .. import _cuda
except ImportError as err:
    _cuda = None
    mark_unavailable("cuda", f"native extension sqret._cuda is not built (no nvcc at install time?): {err}")

MAX_K = 2048
_CHUNK = 1 << 30  # codes per launch (positions in a key are 32-bit)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def adc_topk(table: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool):
    if table.dtype == torch.float64 or codes.dtype != torch.uint8 or min(k, codes.shape[0]) > MAX_K:
        return reference.adc_topk(table, codes, k, largest, packed)
    lut = table.to(torch.float32).contiguous()
    Q, M, K = lut.shape

    def scan(c: torch.Tensor, kk: int):
        c = c.contiguous()
        blocks = -(-c.shape[0] // _cuda.adc_chunk(kk))
        keys = torch.empty((Q, blocks * kk), dtype=torch.int64, device=lut.device)
        _cuda.adc_topk_partial(lut.data_ptr(), Q, M, K, c.data_ptr(), c.shape[0], c.shape[1], packed, largest, kk,
                               keys.data_ptr(), _stream())
        return reference.keys_to_topk(keys.sort(dim=1).values[:, :kk], -1.0 if largest else 1.0)

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


if _cuda is not None:
    if _cuda.device_count() > 0 and torch.cuda.is_available():
        register("cuda", ("cuda",), {"adc_topk": adc_topk, "encode": encode}, priority={"cuda": 30})
    else:
        mark_unavailable("cuda", "sqret._cuda is built, but there is no CUDA GPU on this machine")
