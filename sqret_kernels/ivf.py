"""IVF-PQ scan on the GPU: the probed inverted lists of every query, scored by ADC, fused with top-k.

The lists live on the device as one array of codes [N_total, code bytes] (4-bit codes packed two per byte
when K <= 16) with offsets [nlist + 1]. One program per (query, probe, split of the list) reads its slice of
the probed list once, sums the table entries of its (query, list) pair (residual tables: one table per
pair; otherwise one per query) plus a per-pair bias (the inner product <q, c_l> for ip), and keeps a running
top-KEEP of keys (ordered float bits << 32 | position in the concatenated lists, below 2**32:
``ops.DeviceLists`` checks it) with the streaming scan's merge (``adc._running_topk``). One small sort
over the (probe, split) candidates of each query merges them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .adc import _dist_tile, _keys, _running_topk, stream_config
from .soft import INTERPRET


def scan_config(keep: int) -> dict:
    """The streaming scan's tile and merge for one query per program."""
    return stream_config(keep, 1)


@triton.jit
def _ivf_scan(lut_ptr, codes_ptr, list_ptr, offsets_ptr, bias_ptr, keys_ptr, P, M, K, scn, sign, per_prog,
              splits, KEEP: tl.constexpr, KP: tl.constexpr, PACKED: tl.constexpr, SELECT: tl.constexpr,
              BLOCK_N: tl.constexpr, SHARED: tl.constexpr = 0):
    """keys [Q * P, splits, KEEP]: the KEEP best of split ``sp`` of the list probed by pair ``pid`` (q * P + p)."""
    pid, sp = tl.program_id(0), tl.program_id(1)
    li = tl.load(list_ptr + pid)
    lc = tl.maximum(li, 0)
    start = tl.load(offsets_ptr + lc)
    end = tl.where(li >= 0, tl.load(offsets_ptr + lc + 1), start)
    lo = start + sp * per_prog
    hi = tl.minimum(lo + per_prog, end)
    if SHARED:
        row = pid // P  # one table per query
    else:
        row = pid  # one table per (query, list)
    rq = row + tl.arange(0, 1)
    mq = rq >= 0
    bias = tl.load(bias_ptr + pid)
    cols = tl.arange(0, KP)
    best = tl.full([1, KP], 0x7FFFFFFFFFFFFFFF, tl.int64)
    for n0 in range(lo, hi, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mn = rn < hi
        dist = (_dist_tile(lut_ptr, codes_ptr, rq, rn, mq, mn, M, K, scn, PACKED, 1, BLOCK_N) + bias) * sign
        best = _running_topk(best, _keys(dist, rn, mn), cols, KEEP, SELECT)
    out = keys_ptr + (pid * splits + sp) * KEEP
    tl.store(out + cols[None, :], best, mask=cols[None, :] < KEEP)


def _splits(pairs: int, longest: int, block_n: int, device: torch.device) -> int:
    """Splits of each probed list: enough programs for the GPU when there are few (query, probe) pairs."""
    if INTERPRET:
        target = 2 * pairs
    else:
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(target, max(pairs, 1)), triton.cdiv(max(longest, 1), block_n)))


def ivf_topk(tables: torch.Tensor, shared: bool, codes: torch.Tensor, packed: bool, offsets: torch.Tensor,
             longest: int, probes: torch.Tensor, bias: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Sorted keys [Q, kk] (kk = min(k, P * candidates)) over the probed lists.

    tables [Q * P or Q (shared), M, K] float32; codes [N_total, code bytes] uint8; offsets [nlist + 1] int64;
    longest: the longest list; probes [Q, P] int64 (-1: none); bias [Q, P] float32 added to every score of a
    pair. Keys: (ordered bits of sign * score) << 32 | position, sign = -1 when largest; MAX_KEY: none."""
    Q, P = probes.shape
    _, M, K = tables.shape
    cfg = scan_config(k)
    splits = _splits(Q * P, longest, cfg["BLOCK_N"], codes.device)
    per_prog = triton.cdiv(triton.cdiv(max(longest, 1), splits), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    keys = torch.empty((Q, P * splits * k), dtype=torch.int64, device=codes.device)
    if Q * P:
        _ivf_scan[(Q * P, splits)](tables.contiguous(), codes, probes.contiguous(), offsets,
                                   bias.to(torch.float32).contiguous(), keys, P, M, K, codes.stride(0),
                                   -1.0 if largest else 1.0, per_prog, splits, KEEP=k, KP=cfg["KP"],
                                   PACKED=int(packed), SELECT=cfg["SELECT"], BLOCK_N=cfg["BLOCK_N"],
                                   SHARED=int(shared), num_warps=cfg["num_warps"])
    return keys.sort(dim=1).values[:, :k]
