"""ADC scan fused with top-k, streaming: near the memory floor by construction.

A grid sized to the GPU (programs along the database = a few per SM) gives each program a long slice of the
codes. It reads its codes once per block of queries, gathers the LUT entries (from L1/L2), sums over
sub-spaces, and keeps a running top-``KEEP`` per query of 64-bit keys (order-preserving float bits << 32 |
position: ties go to the smaller position, exactly), held sorted in registers. A tile merges into it only
when one of its keys beats the current KEEP-th best (after the first tiles, rarely). Each program writes its
KEEP keys per query once; one small sort merges them. The bytes moved beyond the codes are in
:func:`traffic`. k above FUSED_MAX_K takes a chunked multi-pass path (distances for a chunk, then a stable
top-k merge), so no k is ever an error.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .soft import INTERPRET, _pow2

FUSED_MAX_K = 1024  # larger k: the multi-pass path
SELECT_MAX_K = 32  # up to this k, a merge by repeated minimum extraction; above, a bitonic merge
MAX_KEY = 0x7FFFFFFFFFFFFFFF
PROGRAMS_PER_SM = 4
KEEP_SAMPLES = (1, 5, 10, 16, 32, 33, 100, 256, 500, 1024)
"""The k that benchmarks/gpu_static.py compiles the top-k kernels for: both merge paths, extraction loops of
several lengths (KP 1, 8, 16, 32), and each running-list width of the bitonic merge (KP 64 ... 1024)."""


def stream_config(keep: int, block_q: int) -> dict:
    """Tile and merge of the streaming scan for top-``keep``: KP (running list width, a power of two),
    SELECT (extraction merge for small k), BLOCK_N (codes per tile), num_warps."""
    kp = _pow2(keep, 1)
    select = keep <= SELECT_MAX_K
    block_n = 256 if select else kp  # the bitonic merge takes one tile as wide as the running list
    # the bitonic merges of [BLOCK_Q, KP] int64 keys: 8 warps from 512 keys on (4 spill at KP = 128, BLOCK_Q = 4)
    wide = kp * block_q >= (512 if not select else 2048)
    return {"KP": kp, "SELECT": select, "BLOCK_N": block_n, "num_warps": 8 if wide else 4}


@triton.jit
def _merge_select(best, key, cols, KEEP: tl.constexpr):
    """Top KEEP (ascending) of a sorted running list best [BQ, KP] and a tile key [BQ, BN], by KEEP minimum
    extractions (keys are unique except MAX_KEY)."""
    new = tl.full(best.shape, 0x7FFFFFFFFFFFFFFF, tl.int64)
    for j in tl.static_range(KEEP):
        pick = tl.minimum(tl.min(best, 1), tl.min(key, 1))
        new = tl.where(cols[None, :] == j, pick[:, None], new)
        best = tl.where(best == pick[:, None], 0x7FFFFFFFFFFFFFFF, best)
        key = tl.where(key == pick[:, None], 0x7FFFFFFFFFFFFFFF, key)
    return new


@triton.jit
def _merge_sorted(best, key):
    """Top KP (ascending) of a sorted running list best [BQ, KP] and a tile key [BQ, KP]: the elementwise
    minimum of best and the reversed sorted tile is a bitonic sequence holding the KP smallest; sort it."""
    tile = tl.sort(key, 1)
    return tl.sort(tl.minimum(best, tl.flip(tile, 1)), 1)


@triton.jit
def _kth(best, cols, KEEP: tl.constexpr):
    """The KEEP-th smallest key per row of the sorted running list [BQ, KP]."""
    return tl.min(tl.where(cols[None, :] == KEEP - 1, best, 0x7FFFFFFFFFFFFFFF), 1)


@triton.jit
def _keys(dist, rn, mn):
    """Order-preserving int64 keys of float32 distances [BQ, BN] at positions rn (MAX_KEY outside mn)."""
    dist = dist + 0.0  # -0.0 -> +0.0
    bits = dist.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order as signed int32 order
    key = (ordered.to(tl.int64) << 32) | rn[None, :].to(tl.int64)
    return tl.where(mn[None, :], key, 0x7FFFFFFFFFFFFFFF)


@triton.jit
def _running_topk(best, key, cols, KEEP: tl.constexpr, SELECT: tl.constexpr):
    """Merge a tile into the running list when one of its keys beats the current KEEP-th best."""
    thr = _kth(best, cols, KEEP)
    key = tl.where(key < thr[:, None], key, 0x7FFFFFFFFFFFFFFF)
    if tl.min(tl.min(key, 1), 0) < 0x7FFFFFFFFFFFFFFF:
        if SELECT:
            best = _merge_select(best, key, cols, KEEP)
        else:
            best = _merge_sorted(best, key)
    return best


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
        code = tl.minimum(code, K - 1)  # codes >= K (an unchecked file) never read past the table
        v = tl.load(lut_ptr + rq[:, None] * (M * K) + m * K + code[None, :], mask=mq[:, None] & mn[None, :],
                    other=0.0)
        dist += v.to(tl.float32)
    return dist


@triton.jit
def _adc_stream(lut_ptr, codes_ptr, keys_ptr, Q, N, M, K, scn, sign, per_prog, KEEP: tl.constexpr,
                KP: tl.constexpr, PACKED: tl.constexpr, SELECT: tl.constexpr, BLOCK_Q: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """keys [Q, programs_n * KEEP]: the KEEP best (smallest sign * distance) per query of this program's slice
    [pn * per_prog, (pn + 1) * per_prog) of the codes, sorted."""
    pq, pn = tl.program_id(0), tl.program_id(1)
    rq = pq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mq = rq < Q
    cols = tl.arange(0, KP)
    best = tl.full([BLOCK_Q, KP], 0x7FFFFFFFFFFFFFFF, tl.int64)
    lo = pn * per_prog
    hi = tl.minimum(lo + per_prog, N)
    for n0 in range(lo, hi, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mn = rn < hi
        dist = _dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED, BLOCK_Q, BLOCK_N) * sign
        best = _running_topk(best, _keys(dist, rn, mn), cols, KEEP, SELECT)
    out = keys_ptr + rq * (tl.num_programs(1) * KEEP) + pn * KEEP
    tl.store(out[:, None] + cols[None, :], best, mask=mq[:, None] & (cols[None, :] < KEEP))


@triton.jit
def _adc_dist(lut_ptr, codes_ptr, out_ptr, Q, N, M, K, scn, PACKED: tl.constexpr, BLOCK_Q: tl.constexpr,
              BLOCK_N: tl.constexpr):
    pq, pn = tl.program_id(0), tl.program_id(1)
    rq = pq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    mq, mn = rq < Q, rn < N
    dist = _dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED, BLOCK_Q, BLOCK_N)
    tl.store(out_ptr + rq[:, None] * N + rn[None, :], dist, mask=mq[:, None] & mn[None, :])


def _programs_n(Q: int, N: int, block_q: int, block_n: int, device: torch.device) -> int:
    """Programs along the database: a few per SM over all query blocks, each with at least one tile."""
    if INTERPRET:
        target = 4  # several programs and several tiles per program, at test sizes
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, PROGRAMS_PER_SM * sms // triton.cdiv(Q, block_q))
    return max(1, min(target, triton.cdiv(N, block_n)))


def traffic(Q: int, N: int, code_bytes: int, k: int, programs_n: int) -> dict:
    """Bytes moved by one fused scan (the model the benchmark report prints): codes read, keys written by
    the programs, and the merge (keys read and the sorted result written)."""
    kk = min(k, N)
    keys = Q * programs_n * kk * 8
    codes = N * code_bytes
    merge = keys + Q * kk * 8 if programs_n > 1 else 0
    return {"codes_read": codes, "keys_written": keys, "merge": merge,
            "overhead": (keys + merge) / max(codes, 1)}


def adc_topk_fused(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool) -> torch.Tensor:
    """Fused path, k <= FUSED_MAX_K: sorted keys [Q, kk], kk = min(k, N): (ordered bits of sign * distance)
    << 32 | position, sign = -1 when largest; the caller decodes them."""
    Q, M, K = lut.shape
    N = codes.shape[0]
    lut, codes = lut.to(torch.float32).contiguous(), codes.contiguous()
    kk = min(k, N)
    BQ = min(_pow2(Q, 1), 4)
    cfg = stream_config(kk, BQ)
    pn = _programs_n(Q, N, BQ, cfg["BLOCK_N"], lut.device)
    per_prog = triton.cdiv(triton.cdiv(N, pn), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    pn = triton.cdiv(N, per_prog)
    keys = torch.empty((Q, pn * kk), dtype=torch.int64, device=lut.device)
    sign = -1.0 if largest else 1.0
    _adc_stream[(triton.cdiv(Q, BQ), pn)](lut, codes, keys, Q, N, M, K, codes.stride(0), sign, per_prog, KEEP=kk,
                                          KP=cfg["KP"], PACKED=packed, SELECT=cfg["SELECT"], BLOCK_Q=BQ,
                                          BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"])
    return keys.sort(dim=1).values[:, :kk] if pn > 1 else keys


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
