"""Reference backend: plain PyTorch on any device, the CPU fallback and the ground truth of every test.

Memory is bounded: every op works in chunks of rows so that no temporary holds more than about
``CHUNK_ELEMENTS`` elements; ``[B, M, K]`` scores and ``[Q, N]`` distances are never materialised whole
(``assign_probs`` returns ``[B, M, K]`` by definition). Backward passes recompute the forward per chunk
(flash-attention style): only the inputs are saved.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .checks import code_dtype

CHUNK_ELEMENTS = 1 << 22  # elements per temporary; tests lower it to exercise chunking


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _row_chunks(n: int, per_row: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def _split(x: torch.Tensor, M: int) -> torch.Tensor:
    """[n, d] -> [M, n, dsub]."""
    return x.reshape(x.shape[0], M, -1).transpose(0, 1)


def _merge(zs: torch.Tensor) -> torch.Tensor:
    """[M, n, dsub] -> [n, d]."""
    return zs.transpose(0, 1).reshape(zs.shape[1], -1)


def _codewords(codebooks: torch.Tensor, metric: str) -> torch.Tensor:
    return F.normalize(codebooks, dim=-1) if metric == "cos" else codebooks


def cosine_inputs(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine as an inner product: x [B, d] with every sub-vector L2-normalized, and normalized codebooks."""
    M, _, d = codebooks.shape
    xn = F.normalize(x.reshape(x.shape[0], M, d), dim=-1).reshape(x.shape[0], M * d)
    return xn, F.normalize(codebooks, dim=-1)


def kernel_inputs(x: torch.Tensor, codebooks: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x and codebooks as the native kernels take them: float32, contiguous, normalized for cosine (which the
    kernels then run as an inner product)."""
    f32 = torch.float32
    if metric != "cos" and x.dtype is f32 is codebooks.dtype and x.is_contiguous() and codebooks.is_contiguous():
        return x, codebooks  # as they are (the conversions cost a microsecond even when they copy nothing)
    xs, C = x.float(), codebooks.float()
    if metric == "cos":
        xs, C = cosine_inputs(xs, C)
    return xs.contiguous(), C.contiguous()


def _scores(xs: torch.Tensor, C: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarity, larger is closer: xs [M, n, dsub], C [M, K, dsub] (normalized for cos) -> [M, n, K]."""
    if metric == "cos":
        xs = F.normalize(xs, dim=-1)
    dot = torch.bmm(xs, C.transpose(1, 2))
    if metric != "l2":
        return dot
    sq = (xs * xs).sum(-1, keepdim=True) - 2 * dot + (C * C).sum(-1).unsqueeze(1)
    return -sq.clamp_min(0)


def _soft_chunk(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    C = _codewords(codebooks, metric)
    p = torch.softmax(_scores(_split(x, C.shape[0]), C, metric) / tau, dim=-1)
    return _merge(torch.bmm(p, C))


def _probs_chunk(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    C = _codewords(codebooks, metric)
    return torch.softmax(_scores(_split(x, C.shape[0]), C, metric) / tau, dim=-1).transpose(0, 1)


def soft_quantize(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    """z [B, d]: per sub-space softmax(s(x_m, c) / tau) @ C_m."""
    M, K, _ = codebooks.shape
    cd = _compute_dtype(x, codebooks)
    cb = codebooks.to(cd)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    for b0, b1 in _row_chunks(x.shape[0], M * K):
        out[b0:b1] = _soft_chunk(x[b0:b1].to(cd), cb, tau, metric)
    return out


def assign_probs(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    """p [B, M, K]: per sub-space softmax(s(x_m, c) / tau)."""
    M, K, _ = codebooks.shape
    cd = _compute_dtype(x, codebooks)
    cb = codebooks.to(cd)
    out = torch.empty((x.shape[0], M, K), dtype=x.dtype, device=x.device)
    for b0, b1 in _row_chunks(x.shape[0], M * K):
        out[b0:b1] = _probs_chunk(x[b0:b1].to(cd), cb, tau, metric)
    return out


def cosine_backward(x: torch.Tensor, codebooks: torch.Tensor, gx: torch.Tensor, gc: torch.Tensor):
    """Gradients w.r.t. the raw x [B, d] and codebooks [M, K, dsub] (float32) from those w.r.t. the
    normalized inputs of :func:`cosine_inputs` (how the kernels run the cosine metric)."""
    B, (M, _, d) = x.shape[0], codebooks.shape
    gx = _normalize_backward(x.float().reshape(B, M, d), gx.reshape(B, M, d)).reshape(B, M * d)
    return gx, _normalize_backward(codebooks.float(), gc)


def _normalize_backward(v: torch.Tensor, g: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Gradient w.r.t. v of F.normalize(v, dim=-1) given the gradient g of its output."""
    n = v.norm(dim=-1, keepdim=True)
    u = v / n.clamp_min(eps)
    return torch.where(n > eps, (g - u * (u * g).sum(-1, keepdim=True)) / n.clamp_min(eps), g / eps)


def _backward_chunk(g, xs, C, tau: float, metric: str, wrt_probs: bool):
    """Gradients for one chunk, recomputing the probabilities.

    xs [M, n, dsub] and raw codebooks C [M, K, dsub]; g is [M, n, dsub] (grad of z) or [M, n, K] (grad of p).
    Returns dx [M, n, dsub] and the codebook gradient [M, K, dsub] w.r.t. the codewords used (normalized for
    cos: the caller applies the normalization's backward once, after summing the chunks).
    """
    Cw = _codewords(C, metric)
    P = torch.softmax(_scores(xs, Cw, metric) / tau, dim=-1)
    if wrt_probs:
        A, dC = g, torch.zeros_like(Cw)
    else:
        A, dC = torch.bmm(g, Cw.transpose(1, 2)), torch.bmm(P.transpose(1, 2), g)
    dS = P * (A - (P * A).sum(-1, keepdim=True)) / tau  # softmax backward
    if metric == "l2":  # s = -||x - c||^2
        rows = dS.sum(-1, keepdim=True)
        dx = 2 * (torch.bmm(dS, C) - xs * rows)
        dC = dC + 2 * (torch.bmm(dS.transpose(1, 2), xs) - C * dS.sum(1).unsqueeze(-1))
        return dx, dC
    xw = F.normalize(xs, dim=-1) if metric == "cos" else xs
    dxw = torch.bmm(dS, Cw)
    dC = dC + torch.bmm(dS.transpose(1, 2), xw)
    return (_normalize_backward(xs, dxw) if metric == "cos" else dxw), dC


def _backward(grad, x, codebooks, tau: float, metric: str, wrt_probs: bool):
    M, K, _ = codebooks.shape
    cd = _compute_dtype(x, codebooks)
    C = codebooks.to(cd)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    gc = torch.zeros(codebooks.shape, dtype=cd, device=codebooks.device)
    for b0, b1 in _row_chunks(x.shape[0], M * K):
        xs = _split(x[b0:b1].to(cd), M)
        g = grad[b0:b1].to(cd)
        g = g.transpose(0, 1) if wrt_probs else _split(g, M)
        dx, dC = _backward_chunk(g, xs, C, tau, metric, wrt_probs)
        gx[b0:b1] = _merge(dx)
        gc += dC
    if metric == "cos":
        gc = _normalize_backward(C, gc)
    return gx, gc.to(codebooks.dtype)


def soft_quantize_backward(grad, x, codebooks, tau: float, metric: str):
    """(grad_x [B, d], grad_codebooks [M, K, dsub]) of soft_quantize for grad [B, d]."""
    return _backward(grad, x, codebooks, tau, metric, wrt_probs=False)


def assign_probs_backward(grad, x, codebooks, tau: float, metric: str):
    """(grad_x [B, d], grad_codebooks [M, K, dsub]) of assign_probs for grad [B, M, K]."""
    return _backward(grad, x, codebooks, tau, metric, wrt_probs=True)


def encode(x: torch.Tensor, codebooks: torch.Tensor, metric: str) -> torch.Tensor:
    """codes [B, M]: nearest codeword per sub-space (smallest index on ties)."""
    M, K, _ = codebooks.shape
    cd = _compute_dtype(x, codebooks)
    C = _codewords(codebooks.to(cd), metric)
    out = torch.empty((x.shape[0], M), dtype=code_dtype(K), device=x.device)
    for b0, b1 in _row_chunks(x.shape[0], M * K):
        s = _scores(_split(x[b0:b1].to(cd), M), C, metric)
        out[b0:b1] = s.argmax(dim=-1).transpose(0, 1).to(out.dtype)
    return out


def unpack4(codes: torch.Tensor, M: int) -> torch.Tensor:
    """Packed 4-bit codes [N, ceil(M/2)] uint8 -> [N, M] uint8 (sub-space 2j low nibble, 2j+1 high)."""
    both = torch.stack((codes & 15, codes >> 4), dim=-1)
    return both.reshape(codes.shape[0], 2 * codes.shape[1])[:, :M]


def pack4(codes: torch.Tensor) -> torch.Tensor:
    """Codes [N, M] in [0, 16) -> packed [N, ceil(M/2)] uint8; odd M leaves the last high nibble 0."""
    c = codes.to(torch.uint8)
    if c.shape[1] % 2:
        c = torch.cat([c, c.new_zeros(c.shape[0], 1)], dim=1)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def decode(codes: torch.Tensor, codebooks: torch.Tensor, packed: bool) -> torch.Tensor:
    """[N, d]: the codewords that codes select."""
    M, K, d = codebooks.shape
    out = torch.empty((codes.shape[0], M * d), dtype=codebooks.dtype, device=codebooks.device)
    sub = torch.arange(M, device=codebooks.device)
    for n0, n1 in _row_chunks(codes.shape[0], M * d):
        c = unpack4(codes[n0:n1], M) if packed else codes[n0:n1]
        out[n0:n1] = codebooks[sub, c.long()].reshape(n1 - n0, M * d)
    return out


def decode_backward(grad: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, packed: bool):
    """grad_codebooks [M, K, dsub] of decode: grad [N, d] scattered back onto the selected codewords."""
    M, K, d = codebooks.shape
    gc = torch.zeros(codebooks.shape, dtype=grad.dtype, device=grad.device)
    sub = torch.arange(M, device=grad.device).expand(1, M)
    for n0, n1 in _row_chunks(codes.shape[0], M * d):
        c = unpack4(codes[n0:n1], M) if packed else codes[n0:n1]
        gc.index_put_((sub, c.long()), grad[n0:n1].reshape(n1 - n0, M, d), accumulate=True)
    return gc


def build_lut(q: torch.Tensor, codebooks: torch.Tensor, metric: str, dtype: torch.dtype | None) -> torch.Tensor:
    """lut [Q, M, K]: l2 squared distance, l2_sqrt distance, ip dot, cos cosine per sub-space."""
    M, K, _ = codebooks.shape
    cd = _compute_dtype(q, codebooks)
    base = "l2" if metric == "l2_sqrt" else metric
    C = _codewords(codebooks.to(cd), base)
    out_dtype = dtype or cd
    out = torch.empty((q.shape[0], M, K), dtype=out_dtype, device=q.device)
    for q0, q1 in _row_chunks(q.shape[0], M * K):
        s = _scores(_split(q[q0:q1].to(cd), M), C, base).transpose(0, 1)
        if base == "l2":
            s = -s
            if metric == "l2_sqrt":
                s = s.sqrt()
        out[q0:q1] = s.to(out_dtype)
    return out


def _topk_first(dist: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k of each row of dist [Q, n], sorted best first, ties by smaller position. Deterministic."""
    Q = dist.shape[0]
    v = torch.topk(dist, k, dim=1, largest=largest, sorted=False).values
    kth = v.min(1, keepdim=True).values if largest else v.max(1, keepdim=True).values
    better = dist > kth if largest else dist < kth
    tie = dist == kth
    need = k - better.sum(1, keepdim=True)
    take = better | (tie & (tie.cumsum(1) <= need))
    pos = take.nonzero()[:, 1]
    if pos.numel() != Q * k:
        raise ValueError("ADC distances contain NaN (does the LUT mix +inf and -inf?)")
    pos = pos.reshape(Q, k)
    vals = dist.gather(1, pos)
    order = torch.sort(vals, dim=1, stable=True, descending=largest).indices
    return vals.gather(1, order), pos.gather(1, order)


def merge_topk(v1, i1, v2, i2, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two sorted top-k lists; on equal values the first list (smaller ids) wins."""
    v = torch.cat([v1, v2], dim=1)
    i = torch.cat([i1, i2], dim=1)
    order = torch.sort(v, dim=1, stable=True, descending=largest).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


def pad_topk(v: torch.Tensor, i: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad [Q, n] results to [Q, k] with value -inf/+inf and id -1, as FAISS does."""
    missing = k - v.shape[1]
    if missing <= 0:
        return v, i
    fill = float("-inf") if largest else float("inf")
    v = torch.cat([v, v.new_full((v.shape[0], missing), fill)], dim=1)
    i = torch.cat([i, i.new_full((i.shape[0], missing), -1)], dim=1)
    return v, i


def keys_to_topk(keys: torch.Tensor, sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode sorted 64-bit top-k keys of the GPU kernels: (ordered float bits << 32) | position, where the
    float bits are mapped so that signed key order is float order (negatives: magnitude bits flipped)."""
    pos = keys & 0xFFFFFFFF
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.view(torch.float32) * sign, pos


def chunked_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, chunk: int, scan):
    """Top-k over codes in chunks of ``chunk`` rows: ``scan(codes_chunk, kk)`` gives a chunk's sorted
    (values, positions); the chunks are merged with a running top-k and padded as FAISS does."""
    Q, N = lut.shape[0], codes.shape[0]
    kk = min(k, N)
    best_v = torch.empty((Q, 0), dtype=torch.float32, device=lut.device)
    best_i = torch.empty((Q, 0), dtype=torch.int64, device=lut.device)
    if Q and kk:
        for n0 in range(0, N, chunk):
            v, i = scan(codes[n0 : n0 + chunk], kk)
            best_v, best_i = merge_topk(best_v, best_i, v, i + n0, kk, largest)
    return pad_topk(best_v, best_i, k, largest)


def topk_dtype(lut: torch.Tensor) -> torch.dtype:
    return torch.float64 if lut.dtype == torch.float64 else torch.float32


def adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool):
    """(values [Q, k], positions [Q, k] int64): best k of sum_m lut[q, m, codes[n, m]] over n."""
    Q, M, K = lut.shape
    N = codes.shape[0]
    vd = topk_dtype(lut)
    table = lut.to(vd)
    kk = min(k, N)
    best_v = torch.empty((Q, 0), dtype=vd, device=lut.device)
    best_i = torch.empty((Q, 0), dtype=torch.int64, device=lut.device)
    if Q and kk:
        for n0, n1 in _row_chunks(N, max(Q, 2 * M)):
            c = codes[n0:n1].to(lut.device)
            c = (unpack4(c, M) if packed else c).long()
            dist = torch.zeros((Q, n1 - n0), dtype=vd, device=lut.device)
            for m in range(M):
                dist += table[:, m, :].index_select(1, c[:, m])
            v, i = _topk_first(dist, min(kk, n1 - n0), largest)
            best_v, best_i = merge_topk(best_v, best_i, v, i + n0, kk, largest)
    return pad_topk(best_v, best_i, k, largest)


FASTSCAN_BLOCK = 64  # codes per fast-scan block


def fastscan_pack(codes: torch.Tensor, M: int) -> torch.Tensor:
    """Codes [N, M] in [0, 16) -> fast-scan blocks [ceil(N/64), M, 32] uint8: byte j of (block b, sub-space
    m) holds vector 64b+j in the low nibble and vector 64b+32+j in the high nibble (zero past N)."""
    N, B = codes.shape[0], FASTSCAN_BLOCK
    nb = (N + B - 1) // B
    c = torch.zeros((nb * B, M), dtype=torch.uint8, device=codes.device)
    c[:N] = codes
    c = c.view(nb, 2, B // 2, M)
    return (c[:, 0] | (c[:, 1] << 4)).transpose(1, 2).contiguous()


def fastscan_unpack(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Fast-scan blocks [nb, M, 32] -> codes [n, M] uint8."""
    nb, M, _ = blocks.shape
    both = torch.stack((blocks & 15, blocks >> 4), dim=2)  # [nb, M, 2, 32]
    return both.permute(0, 2, 3, 1).reshape(nb * FASTSCAN_BLOCK, M)[:n]


def adc_topk_fastscan(lut: torch.Tensor, blocks: torch.Tensor, n: int, k: int, largest: bool, exact: bool = True):
    """adc_topk over fast-scan blocks holding n codes: exact, or the quantized distances of
    :func:`quantize_lut` (the model of the native fast scan's approximate mode)."""
    codes = fastscan_unpack(blocks, n)
    if exact:
        return adc_topk(lut, codes, k, largest, False)
    return approx_topk(lut, codes, k, largest)


MAX_SPLIT = 8  # sub-spaces whose fast-scan entries may take 16 bits, and at most M // 8 (see quantize_lut)


def quantize_lut(lut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast scan's quantization of tables lut [Q, M, 16] (smaller is closer), as the native kernel does it.

    Per query one scale a: the widest sub-space range / 255, unless splitting the S = min(MAX_SPLIT, M // 8) widest
    sub-spaces halves it at least: then a = max(the (S + 1)-th widest range / 255, sum of ranges /
    60000), and every sub-space wider than 255 a keeps entries of 16 bits. Entries q[m, j] = rint(min(top,
    (L[m, j] - min_m) * float32(1 / a))) in float32 (top 255, or 65535 in a split sub-space); bias = the sum
    of the minima (float64, in sub-space order). A code's quantized sum is sum_m (q & 255) + 256 min(255,
    sum_m (q >> 8)), at most 65535 (see :func:`quantized_sums`).
    Returns (q [Q, M, 16] int64, a [Q] float64, bias [Q] float64, split [Q, M] bool)."""
    L = lut.to(torch.float32)
    Q, M, _ = L.shape
    mins, maxs = L.min(-1).values, L.max(-1).values  # [Q, M]
    ranges = maxs - mins
    a = torch.ones(Q, dtype=torch.float64)
    split = torch.zeros((Q, M), dtype=torch.bool)
    bias = torch.zeros(Q, dtype=torch.float64)
    S = min(MAX_SPLIT, M // 8)  # each split sub-space costs the scan another row of shuffles
    for qi in range(Q):
        r = ranges[qi]
        range_sum = 0.0
        for m in range(M):
            bias[qi] += float(mins[qi, m])
            range_sum += float(r[m])
        widest = float(r.max()) if M else 0.0
        rest = float(r.sort(descending=True).values[S]) if S > 0 else 0.0
        a_split = max(rest / 255.0, range_sum / 60000.0)
        aq = widest / 255.0 if widest > 0 else 1.0
        if S > 0 and a_split > 0 and a_split * 2.0 <= aq:
            aq = a_split
            split[qi] = r * torch.tensor(1.0 / aq, dtype=torch.float32) > 255.0
        a[qi] = aq
    s = (1.0 / a).to(torch.float32)
    top = torch.where(split, 65535.0, 255.0).to(torch.float32)[..., None]
    q = torch.round(torch.minimum((L - mins[..., None]) * s[:, None, None], top)).to(torch.int64)  # half even
    return q, a, bias, split


def quantized_sums(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The fast scan's quantized sums [Q, N] (int64) of codes [N, M] over entries q [Q, M, 16]."""
    Q, M, _ = q.shape
    c = codes.long()
    lo = torch.zeros((Q, c.shape[0]), dtype=torch.int64)
    hi = torch.zeros((Q, c.shape[0]), dtype=torch.int64)
    for m in range(M):
        e = q[:, m, :].index_select(1, c[:, m])
        lo += e & 255
        hi += e >> 8
    return torch.clamp_max(lo + 256 * torch.clamp_max(hi, 255), 65535)


def approx_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool):
    """Best k by the quantized distances of :func:`quantize_lut`, float32(bias) + float32(a) * quantized sum
    in float32 (largest: of the negated tables, negated back), ties by smaller position."""
    signed = -lut.to(torch.float32) if largest else lut.to(torch.float32)
    q, a, bias, _ = quantize_lut(signed)
    qsum = quantized_sums(q, codes)
    dist = qsum.to(torch.float32) * a.to(torch.float32)[:, None] + bias.to(torch.float32)[:, None]
    v, i = adc_topk_dist(dist, k)
    return (-v if largest else v), i


def adc_topk_dist(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest k of each row of dist [Q, N], ties by smaller position, padded as FAISS does."""
    kk = min(k, dist.shape[1])
    if kk and dist.shape[0]:
        v, i = _topk_first(dist, kk, False)
    else:
        v = torch.empty((dist.shape[0], 0), dtype=dist.dtype)
        i = torch.empty((dist.shape[0], 0), dtype=torch.int64)
    return pad_topk(v, i, k, False)


def pq_search(queries: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, n: int | None, k: int, metric: str,
              exact: bool = True, labels: torch.Tensor | None = None, check_finite: bool = False):
    """adc_topk of build_lut(queries): codes [N, M], or fast-scan blocks holding n codes when n is not None;
    positions mapped through labels [N] (-1 stays), NaN / inf in queries or codebooks an error when asked."""
    if check_finite:
        checks.finite(queries, "queries"), checks.finite(codebooks, "codebooks")
    lut = build_lut(queries, codebooks, metric, None)
    largest = metric in ("ip", "cos")
    if n is None:
        v, pos = adc_topk(lut, codes, k, largest, False)
    else:
        v, pos = adc_topk_fastscan(lut, codes, n, k, largest, exact)
    return v, map_labels(pos, labels)


def map_labels(pos: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Positions [Q, k] (-1: none) -> labels[pos] (-1 stays); the positions themselves when labels is None."""
    if labels is None:
        return pos
    mapped = labels[pos.clamp_min(0)] if labels.numel() else torch.full_like(pos, -1)
    return torch.where(pos >= 0, mapped, torch.full_like(mapped, -1))


def refine_topk(queries, vectors, candidates, k: int, metric: str, labels=None, sq8=None):
    """Exact distances of each query to its candidate rows (float32), the k best by (distance, label)."""
    Q, kc = candidates.shape
    rows = candidates.clamp_min(0)
    x = vectors[rows.reshape(-1)].to(torch.float32)
    if sq8 is not None:
        x = sq8[0] + x * sq8[1]
    x = x.reshape(Q, kc, vectors.shape[1])  # the width named: -1 is ambiguous for no queries
    q = queries.to(torch.float32)[:, None, :]
    largest = metric == "ip"
    dist = (q * x).sum(-1) if largest else ((q - x) ** 2).sum(-1)
    ids = labels[rows] if labels is not None else rows
    valid = (candidates >= 0) & (ids >= 0)
    fill = float("-inf") if largest else float("inf")
    dist = torch.where(valid, dist, torch.full_like(dist, fill))
    ids = torch.where(valid, ids, torch.full_like(ids, -1))
    by_id = torch.argsort(torch.where(valid, ids, torch.iinfo(torch.int64).max), dim=1, stable=True)
    dist, ids = dist.gather(1, by_id), ids.gather(1, by_id)
    best = torch.sort(dist, dim=1, stable=True, descending=largest).indices[:, :k]
    v, i = pad_topk(dist.gather(1, best), ids.gather(1, best), k, largest)
    return v, i


def coarse_probe(queries: torch.Tensor, centroids: torch.Tensor, nprobe: int, metric: str,
                 centroid_norms: torch.Tensor | None = None, centroids_t: torch.Tensor | None = None) -> torch.Tensor:
    """The nprobe nearest lists [Q, nprobe] of queries [Q, d] (see ops.coarse_probe): one GEMM, then the
    selection op (``centroids_t``, a native backend's layout, is unused)."""
    from . import registry

    q = queries if queries.dtype == centroids.dtype else queries.to(centroids.dtype)
    if metric == "ip":
        dist = torch.mm(q, centroids.T).neg_()
    else:  # ||c||^2 - 2 q.c ranks as ||q - c||^2 (||q||^2 is common to a row)
        norms = centroid_norms if centroid_norms is not None else (centroids * centroids).sum(1)
        dist = torch.addmm(norms, q, centroids.T, alpha=-2)
    if dist.dtype != torch.float32:
        dist = dist.to(torch.float32)
    return registry.run("smallest_k_rows", registry.device_type(queries), dist.contiguous(), nprobe)


def ivf_probe_search(queries, centroids, codebooks, lists, nprobe: int, k: int, metric: str, precomputed=None,
                     exact=True, by_residual=True, sorted=True, centroid_norms=None,  # noqa: A002
                     centroids_t=None):
    """ivf_search over the nprobe nearest lists of each query: coarse_probe, then ivf_search, each as the
    registry chooses for these tensors."""
    from . import registry

    dev = registry.device_type(queries)
    probes = registry.run("coarse_probe", dev, queries, centroids, nprobe, metric, centroid_norms, centroids_t)
    return registry.run("ivf_search", dev, queries, centroids, codebooks, lists, probes, k, metric, precomputed, exact,
                        by_residual, sorted)


def ivf_refine_search(queries, centroids, codebooks, lists, nprobe: int, k: int, metric: str, precomputed=None,
                      exact=True, by_residual=True, centroid_norms=None, centroids_t=None, refine=None):
    """ivf_probe_search of each query's refine.candidates best (unsorted), then refine_topk of them, each as the
    registry chooses for these tensors."""
    from . import registry

    dev = registry.device_type(queries)
    _, rows = registry.run("ivf_probe_search", dev, queries, centroids, codebooks, lists, nprobe, refine.candidates,
                           metric, precomputed, exact, by_residual, False, centroid_norms, centroids_t)
    return registry.run("refine_topk", dev, queries, refine.vectors, rows, k, metric, refine.labels, refine.sq8)



def ivf_searcher(searcher, queries, nprobe: int, k: int, exact: bool, sorted: bool, refine=None):  # noqa: A002
    """IVFSearcher.search: ivf_probe_search (or ivf_refine_search) of the searcher's arguments, each as the
    registry chooses for these tensors."""
    from . import registry

    s, dev = searcher, registry.device_type(queries)
    if refine is not None:
        return registry.run("ivf_refine_search", dev, queries, s.centroids, s.codebooks, s.lists, nprobe, k, s.metric,
                            s.precomputed, exact, s.by_residual, s.centroid_norms, s.centroids_t, refine)
    return registry.run("ivf_probe_search", dev, queries, s.centroids, s.codebooks, s.lists, nprobe, k, s.metric,
                        s.precomputed, exact, s.by_residual, sorted, s.centroid_norms, s.centroids_t)

def smallest_k_rows(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Positions [Q, k] of the k smallest values of each row of dist [Q, n], sorted, ties by position."""
    return torch.sort(dist, dim=1, stable=True).indices[:, :k].contiguous()


def ivf_search(queries, centroids, codebooks, lists, probes, k: int, metric: str, precomputed=None, exact=True,
               by_residual=True, sorted=True):  # noqa: A002 (torch.topk's name); the results are always sorted
    """IVF-PQ search: (values [Q, k], ids [Q, k]) over the lists in probes [Q, nprobe] (-1: none).

    l2 scores the LUT of the residual q - c_l; ip scores <q, c_l> + LUT(q). Ties by smaller id.
    ``lists`` an ops.InvertedLists; ``precomputed`` (an accelerator of the native backend) is unused.
    Fast-scan lists with ``exact=False``: the quantized distances of each (query, list)'s table, the list's
    base term (||q - c||^2 is in the residual table; -<q, c> for ip) added to its first sub-space before the
    quantization, as the native kernel does. ``by_residual=False``: codes of the vectors, the tables of q.
    Queries on another device are searched on the CPU, where the lists are, and the results moved back.
    """
    if not queries.is_cpu:
        v, i = ivf_search(queries.cpu(), centroids.cpu(), codebooks.cpu(), lists, probes.cpu(), k, metric, None, exact,
                          by_residual)
        return v.to(queries.device), i.to(queries.device)
    ids, sizes = lists.ids, lists.sizes
    approx = lists.layout == "fastscan" and not exact
    cd = _compute_dtype(queries, centroids, codebooks)
    queries, centroids, codebooks = queries.to(cd), centroids.to(cd), codebooks.to(cd)
    Q, nprobe = probes.shape
    largest = metric == "ip"
    fill = float("-inf") if largest else float("inf")
    vals = torch.full((Q, nprobe, k), fill)
    out = torch.full((Q, nprobe, k), -1, dtype=torch.int64)
    lut_ip = build_lut(queries, codebooks, "ip", None) if largest else None
    flat = probes.reshape(-1)
    order = torch.argsort(flat, stable=True)
    probed, counts = torch.unique_consecutive(flat[order], return_counts=True)
    for li, pairs in zip(probed.tolist(), torch.split(order, counts.tolist()), strict=True):
        if li < 0 or int(sizes[li]) == 0:
            continue
        c, i = lists.list_codes(li), torch.as_tensor(np.asarray(ids[li]))
        by_id = torch.argsort(i, stable=True)  # scan in id order: the per-list cut keeps the smaller ids
        c, i = c[by_id], i[by_id]
        qs, rank = pairs // nprobe, pairs % nprobe
        if largest:
            lut = lut_ip[qs]
        else:
            lut = build_lut(queries[qs] - centroids[li] if by_residual else queries[qs], codebooks, "l2", None)
        kk = min(k, c.shape[0])
        ip_base = by_residual and largest
        if approx:  # the base term in sub-space 0 (smaller is closer: ip negated), then quantized
            table = -lut.to(torch.float32) if largest else lut.to(torch.float32).clone()
            if ip_base:
                table[:, 0, :] += (-(queries[qs] @ centroids[li])).to(torch.float32)[:, None]
            v, pos = approx_topk(table, c, kk, False)
            v = -v if largest else v
        else:
            v, pos = adc_topk(lut, c, kk, largest, False)
            if ip_base:
                v = v + (queries[qs] @ centroids[li]).unsqueeze(1)
        vals[qs, rank, :kk], out[qs, rank, :kk] = v.to(vals.dtype), i[pos]
    vals, out = vals.reshape(Q, nprobe * k), out.reshape(Q, nprobe * k)
    by_id = torch.argsort(torch.where(out < 0, torch.iinfo(torch.int64).max, out), dim=1, stable=True)
    vals, out = vals.gather(1, by_id), out.gather(1, by_id)
    best = torch.sort(vals, dim=1, stable=True, descending=largest).indices[:, :k]
    return vals.gather(1, best), out.gather(1, best)
