"""ADC scan fused with top-k.

Each program takes a block of queries and a block of codes: it reads the codes once, gathers the LUT entries
(from L1/L2), sums over sub-spaces, and keeps its best ``keep`` candidates per query by sorting 64-bit keys
(order-preserving float bits << 32 | position): ties go to the smaller position, exactly. The per-program
candidates are merged by one sort of keys. k larger than a block falls back to a chunked multi-pass path
(distances for a chunk, then a stable top-k merge), so no k is ever an error.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .soft import INTERPRET, _pow2

FUSED_MAX_K = 1024  # larger k: the multi-pass path
SELECT_MAX_K = 32  # up to this k, repeated minimum extraction; above, a bitonic sort of the tile


@triton.jit
def _dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED: tl.constexpr, BLOCK_Q: tl.constexpr,
               BLOCK_N: tl.constexpr):
    dist = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    for m in range(0, M):
        if PACKED:
            byte = tl.load(codes_ptr + rn * scn + m // 2, mask=mn, other=0).to(tl.int32)
            code = (byte >> ((m % 2) * 4)) & 15
        else:
            code = tl.load(codes_ptr + rn * scn + m, mask=mn, other=0).to(tl.int32)
        v = tl.load(lut_ptr + rq[:, None] * (M * K) + m * K + code[None, :], mask=mq[:, None] & mn[None, :],
                    other=0.0)
        dist += v.to(tl.float32)
    return dist


@triton.jit
def _adc_partial(lut_ptr, codes_ptr, keys_ptr, Q, N, M, K, scn, sign, KEEP: tl.constexpr, PACKED: tl.constexpr,
                 SELECT: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr):
    """keys [Q, programs_n * KEEP]: each program's KEEP best (smallest sign * distance) per query, sorted."""
    pq, pn = tl.program_id(0), tl.program_id(1)
    rq = pq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mq, mn = rq < Q, rn < N
    dist = _dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED, BLOCK_Q, BLOCK_N) * sign + 0.0
    bits = dist.to(tl.int32, bitcast=True)  # + 0.0 above turned -0.0 into +0.0
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order as signed int32 order
    key = (ordered.to(tl.int64) << 32) | rn[None, :].to(tl.int64)
    key = tl.where(mn[None, :], key, 0x7FFFFFFFFFFFFFFF)
    out = keys_ptr + rq * (tl.num_programs(1) * KEEP) + pn * KEEP
    if SELECT:  # small k: extract the minimum KEEP times (keys are unique, positions differ)
        for j in tl.static_range(KEEP):
            best = tl.min(key, 1)
            tl.store(out + j, best, mask=mq)
            key = tl.where(key == best[:, None], 0x7FFFFFFFFFFFFFFF, key)
    else:  # bitonic sort of the whole tile
        key = tl.sort(key, 1)
        cols = tl.arange(0, BLOCK_N)
        tl.store(out[:, None] + cols[None, :], key, mask=mq[:, None] & (cols[None, :] < KEEP))


@triton.jit
def _adc_dist(lut_ptr, codes_ptr, out_ptr, Q, N, M, K, scn, PACKED: tl.constexpr, BLOCK_Q: tl.constexpr,
              BLOCK_N: tl.constexpr):
    pq, pn = tl.program_id(0), tl.program_id(1)
    rq = pq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mq, mn = rq < Q, rn < N
    dist = _dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED, BLOCK_Q, BLOCK_N)
    tl.store(out_ptr + rq[:, None] * N + rn[None, :], dist, mask=mq[:, None] & mn[None, :])


def adc_topk_fused(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool) -> torch.Tensor:
    """Fused path, k <= FUSED_MAX_K: sorted keys [Q, kk], kk = min(k, N): (ordered bits of sign * distance)
    << 32 | position, sign = -1 when largest; the caller decodes them."""
    Q, M, K = lut.shape
    N = codes.shape[0]
    lut, codes = lut.to(torch.float32).contiguous(), codes.contiguous()
    kk = min(k, N)
    select = kk <= SELECT_MAX_K
    if INTERPRET:  # the interpreter sorts element by element: the smallest tile that holds k
        BN = 1024 if select else _pow2(kk)
    else:
        BN = max(_pow2(kk), 256)
    BQ = min(_pow2(Q, 1), 16 if INTERPRET else 4)
    grid = (triton.cdiv(Q, BQ), triton.cdiv(N, BN))
    keys = torch.empty((Q, grid[1] * kk), dtype=torch.int64, device=lut.device)
    sign = -1.0 if largest else 1.0
    _adc_partial[grid](lut, codes, keys, Q, N, M, K, codes.stride(0), sign, KEEP=kk, PACKED=packed, SELECT=select,
                       BLOCK_Q=BQ, BLOCK_N=BN)
    return keys.sort(dim=1).values[:, :kk] if grid[1] > 1 else keys


def adc_distances(lut: torch.Tensor, codes: torch.Tensor, packed: bool) -> torch.Tensor:
    """Distances [Q, N] of one chunk of codes (the multi-pass path for large k)."""
    Q, M, K = lut.shape
    N = codes.shape[0]
    lut, codes = lut.to(torch.float32).contiguous(), codes.contiguous()
    out = torch.empty((Q, N), dtype=torch.float32, device=lut.device)
    BN, BQ = (1024, min(_pow2(Q, 1), 16)) if INTERPRET else (256, 4)
    _adc_dist[(triton.cdiv(Q, BQ), triton.cdiv(N, BN))](lut, codes, out, Q, N, M, K, codes.stride(0), PACKED=packed,
                                                        BLOCK_Q=BQ, BLOCK_N=BN)
    return out
