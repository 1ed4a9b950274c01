"""Distance tables for ADC (build_lut) and codeword gather (decode)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .soft import INTERPRET, _pow2


@triton.jit
def _lut(q_ptr, c_ptr, out_ptr, Q, K, M, d, sqb, scm, sck, METRIC: tl.constexpr, IEEE: tl.constexpr,
         BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """METRIC 0: squared l2, 1: inner product, 2: l2 (non-squared, the SPQ/HQC score). l2 sums the squared
    differences lane by lane (no ||x||^2 - 2 x.c + ||c||^2 expansion, whose cancellation loses float32 digits
    when a sub-vector is near a codeword); the inner product is one tensor-core dot."""
    pq, m, pk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rq = pq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rk = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    mq, mk = rq < Q, rk < K
    if METRIC == 1:
        rd = tl.arange(0, BLOCK_D)
        md = rd < d
        x = tl.load(q_ptr + rq[:, None] * sqb + (m * d + rd)[None, :], mask=mq[:, None] & md[None, :], other=0.0)
        c = tl.load(c_ptr + m * scm + rk[:, None] * sck + rd[None, :], mask=mk[:, None] & md[None, :], other=0.0)
        x, c = x.to(tl.float32), c.to(tl.float32)
        if IEEE:
            v = tl.dot(x, tl.trans(c), input_precision="tf32x3")
        else:
            v = tl.dot(x, tl.trans(c))
    else:
        v = tl.zeros([BLOCK_Q, BLOCK_K], tl.float32)
        for j in range(0, d):
            xj = tl.load(q_ptr + rq * sqb + m * d + j, mask=mq, other=0.0).to(tl.float32)
            cj = tl.load(c_ptr + m * scm + rk * sck + j, mask=mk, other=0.0).to(tl.float32)
            diff = xj[:, None] - cj[None, :]
            v += diff * diff
        if METRIC == 2:
            v = tl.sqrt(v)
    tl.store(out_ptr + rq[:, None] * (M * K) + m * K + rk[None, :], v.to(out_ptr.dtype.element_ty),
             mask=mq[:, None] & mk[None, :])


def lut_config(Q: int, K: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_K, BLOCK_D) of the LUT kernel: on a GPU the query and codeword tiles shrink as d grows
    so that they stay in registers (benchmarks/gpu_static.py checks every choice)."""
    bd = _pow2(d)
    if INTERPRET:
        return min(_pow2(Q), 128), min(_pow2(K), 256), bd
    return (32 if bd <= 64 else 16), min(_pow2(K), 64 if bd <= 32 else 32 if bd == 64 else 16), bd


def build_lut(q: torch.Tensor, codebooks: torch.Tensor, metric: str, dtype: torch.dtype | None) -> torch.Tensor:
    """metric l2, ip or l2_sqrt (the caller rewrites cosine as the inner product of normalized inputs)."""
    M, K, d = codebooks.shape
    q, cb = q.contiguous(), codebooks.contiguous()
    Q = q.shape[0]
    wide = torch.float64 in (q.dtype, cb.dtype)
    out = torch.empty((Q, M, K), dtype=dtype or (torch.float64 if wide else torch.float32), device=q.device)
    if Q:
        BQ, BK, BD = lut_config(Q, K, d)
        METRIC = {"l2": 0, "ip": 1, "l2_sqrt": 2}[metric]
        ieee = q.dtype == cb.dtype == torch.float32
        _lut[(triton.cdiv(Q, BQ), M, triton.cdiv(K, BK))](q, cb, out, Q, K, M, d, q.stride(0), cb.stride(0),
                                                        cb.stride(1), METRIC=METRIC, IEEE=ieee, BLOCK_Q=BQ,
                                                        BLOCK_K=BK, BLOCK_D=BD)
    return out


@triton.jit
def _decode(codes_ptr, c_ptr, out_ptr, N, K, M, d, scn, PACKED: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_D: tl.constexpr):
    pid, m = tl.program_id(0), tl.program_id(1)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    mn, md = rn < N, rd < d
    if PACKED:
        byte = tl.load(codes_ptr + rn * scn + m // 2, mask=mn, other=0).to(tl.int32)
        code = (byte >> ((m % 2) * 4)) & 15
    else:
        code = tl.load(codes_ptr + rn * scn + m, mask=mn, other=0).to(tl.int32)
    v = tl.load(c_ptr + m * (K * d) + code[:, None] * d + rd[None, :], mask=mn[:, None] & md[None, :], other=0.0)
    tl.store(out_ptr + rn[:, None] * (M * d) + m * d + rd[None, :], v, mask=mn[:, None] & md[None, :])


def decode(codes: torch.Tensor, codebooks: torch.Tensor, packed: bool) -> torch.Tensor:
    M, K, d = codebooks.shape
    cb, c = codebooks.contiguous(), codes.contiguous()
    out = torch.empty((codes.shape[0], M * d), dtype=codebooks.dtype, device=codebooks.device)
    if codes.shape[0]:
        BN = min(_pow2(codes.shape[0]), 1024) if INTERPRET else 128
        _decode[(triton.cdiv(codes.shape[0], BN), M)](c, cb, out, codes.shape[0], K, M, d, c.stride(0),
                                                     PACKED=packed, BLOCK_N=BN, BLOCK_D=_pow2(d, 1))
    return out
