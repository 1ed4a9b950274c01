"""Fused soft assignment over codewords: soft_quantize forward / backward, assign_probs, encode.

Per sub-space m and block of rows: scores s = -||x - c||^2 (METRIC 0) or x . c (METRIC 1) against blocks of
codewords, softmax(s / tau) with an online max / sum (flash-attention style), z = p @ C. The probabilities
[B, M, K] are never written by soft_quantize; its backward recomputes them from the log-sum-exp, in two
kernels: one over row blocks (grad x) and one over codeword blocks x splits of the batch (grad codebooks:
partial sums per split, then one fixed-order sum; deterministic, no atomics). All accumulation is float32
whatever the input dtype. Metrics: l2 and ip (the caller rewrites cosine as the inner product of
L2-normalized inputs).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


CONFIGS = ((32, 32, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 3))
"""(BLOCK_B, BLOCK_K, num_warps, num_stages) of the forward kernels at BLOCK_D = 16."""
FORWARD = {16: CONFIGS,
           32: ((16, 32, 4, 2), (32, 32, 4, 2), (32, 32, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2)),
           64: ((16, 32, 4, 2), (32, 32, 8, 2), (32, 64, 8, 2)),
           128: ((16, 16, 4, 1), (16, 32, 8, 1))}
BACKWARD = {16: ((16, 32, 4, 2), (16, 32, 8, 2), (16, 16, 4, 2)),
            32: ((16, 32, 8, 2), (16, 16, 8, 2)),
            64: ((16, 32, 8, 2), (16, 32, 8, 1)),
            128: ((16, 16, 4, 1), (16, 32, 8, 1))}
FORWARD_SPLIT = {32: ((32, 32, 8, 2),),
                 64: ((16, 32, 4, 2), (32, 32, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2))}
BACKWARD_SPLIT = {32: ((16, 32, 8, 2), (16, 16, 8, 2), (32, 16, 8, 1)),
                  64: ((16, 32, 8, 2), (16, 16, 8, 2), (32, 16, 8, 1))}
"""The configurations per BLOCK_D (and per chunk width of the split kernels, see :func:`lanes`) whose
registers hold every tile: no spills and no stack at sm_80 and sm_90, in each dtype the launcher sends
there (benchmarks/gpu_static.py compiles every one and fails on a spill)."""


def configs(block_d: int, backward: bool = False, split: bool = False) -> list[triton.Config]:
    """The autotune configurations of the forward (soft_quantize, assign_probs, encode) or backward kernels
    for sub-vectors of BLOCK_D lanes, or read in chunks of BLOCK_D lanes (split)."""
    if split:
        table = BACKWARD_SPLIT if backward else FORWARD_SPLIT
    else:
        table, block_d = (BACKWARD if backward else FORWARD), min(max(block_d, 16), 128)
    return [triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w, num_stages=st)
            for bb, bk, w, st in table[block_d]]


def smem_estimate(config: triton.Config, block_d: int) -> int:
    """An upper bound of the shared memory (bytes) a soft kernel takes in ``config``: three pipelined row /
    codeword tiles (x, grad, codewords) plus two [BLOCK_B, BLOCK_K] score tiles, float32
    (benchmarks/gpu_static.py checks that it bounds what the compiler allocates)."""
    bb, bk = config.kwargs["BLOCK_B"], config.kwargs["BLOCK_K"]
    return 4 * (max(config.num_stages, 1) * 3 * (bb + bk) * block_d + 2 * bb * bk) + 1024


def _smem_limit() -> int:
    try:
        import torch

        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "shared_memory_per_block_optin", 0) or 49152)
    except Exception:  # noqa: BLE001 - no device: keep every configuration
        return 1 << 30


def _key(c: triton.Config) -> tuple[int, int, int, int]:
    return c.kwargs["BLOCK_B"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages


def _pruner(backward: bool):
    def prune(all_configs, named_args, **kwargs):
        """This d's configurations whose shared memory fits the device (never an empty list)."""
        block_d = int(kwargs.get("BLOCK_D", 16))
        allowed = {_key(c) for c in configs(block_d, backward, bool(kwargs.get("SPLIT", False)))}
        limit = _smem_limit()
        mine = [c for c in all_configs if _key(c) in allowed] or list(all_configs)
        keep = [c for c in mine if smem_estimate(c, block_d) <= limit]
        return keep or [min(mine, key=lambda c: smem_estimate(c, block_d))]

    return prune


def _tuned(backward: bool = False):
    """On a GPU, autotune (BLOCK_B, BLOCK_K, warps, stages) per problem shape (B, K, d) over :func:`configs`
    for that d, pruned to what fits the device's shared memory; in the interpreter, which charges per
    program, the launch passes large fixed blocks instead (see _launch)."""

    def wrap(kernel):
        if INTERPRET:
            return kernel
        every = sorted({_key(c) for bd in (16, 32, 64, 128) for c in configs(bd, backward)}
                       | {_key(c) for bd in (32, 64) for c in configs(bd, backward, split=True)})
        listed = [triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w, num_stages=st) for bb, bk, w, st in every]
        return triton.autotune(configs=listed, key=["B", "K", "d"],
                               prune_configs_by={"early_config_prune": _pruner(backward)})(kernel)

    return wrap


_FORCED: contextvars.ContextVar[triton.Config | None] = contextvars.ContextVar("sqret_soft_config", default=None)


@contextlib.contextmanager
def forced_config(config: triton.Config):
    """Launch the soft kernels with one configuration instead of autotuning (the GPU tests run each)."""
    token = _FORCED.set(config)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _launch(kernel, over_rows: bool, B: int, K: int, M: int, args: tuple, meta: dict, splits: int = 1) -> None:
    """Grid over row blocks (or codeword blocks) x M (sub-spaces, or sub-spaces x chunks of lanes) (x batch
    splits of the codeword gradient)."""
    forced = None if INTERPRET else _FORCED.get()
    if INTERPRET or forced is not None:
        if forced is not None:
            BB, BK = forced.kwargs["BLOCK_B"], forced.kwargs["BLOCK_K"]
            opts = dict(num_warps=forced.num_warps, num_stages=forced.num_stages)
        else:
            BB, BK, opts = min(_pow2(B), 256), min(_pow2(K), 256), {}
        grid = (triton.cdiv(B, BB) if over_rows else triton.cdiv(K, BK), M, splits)
        fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
        fn[grid](*args, BLOCK_B=BB, BLOCK_K=BK, **meta, **opts)
    else:
        kernel[lambda META: (triton.cdiv(B, META["BLOCK_B"]) if over_rows else triton.cdiv(K, META["BLOCK_K"]), M,
                             splits)](*args, **meta)


@triton.jit
def _rows(ptr, rb, rd, mb, md, stride, m, d):
    """Sub-vectors m of the rows rb: [BB, BD] float32 (zeros outside the masks)."""
    return tl.load(ptr + rb[:, None] * stride + (m * d + rd)[None, :], mask=mb[:, None] & md[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _codewords(c_ptr, rk, rd, mk, md, scm, sck, m):
    """Codewords rk of sub-space m: [BK, BD] float32 (zeros outside the masks)."""
    return tl.load(c_ptr + m * scm + rk[:, None] * sck + rd[None, :], mask=mk[:, None] & md[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _mm_t(a, b, IEEE: tl.constexpr):
    """a @ b^T in float32 (3xTF32 when IEEE)."""
    if IEEE:
        out = tl.dot(a, tl.trans(b), input_precision="tf32x3")
    else:
        out = tl.dot(a, tl.trans(b))
    return out


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """a @ b in float32 (3xTF32 when IEEE)."""
    if IEEE:
        out = tl.dot(a, b, input_precision="tf32x3")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _score(dot, xx, cc, inv_tau, METRIC: tl.constexpr):
    """[BB, BK] scaled scores from the dot products x . c and the squared norms of rows and codewords."""
    if METRIC == 0:
        s = tl.minimum(2.0 * dot - xx[:, None] - cc[None, :], 0.0)
    else:
        s = dot
    return s * inv_tau


@triton.jit
def _dots(x, c, g, xx, cc, x_ptr, c_ptr, g_ptr, rb, rk, mb, mk, sxb, scm, sck, sgb, m, d, GRAD: tl.constexpr,
          IEEE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
          BLOCK_D: tl.constexpr):
    """Over every lane of sub-space m: x . c^T and (GRAD) g . c^T [BB, BK], ||x||^2 [BB], ||c||^2 [BK].

    Unsplit, the tiles given (x, c, g, with their norms xx, cc) hold every lane. SPLIT: the lanes are read
    from memory BLOCK_D at a time, so that no tile of a wide sub-space is held in registers at once (the
    tiles given are then one chunk of lanes and are not used here)."""
    if SPLIT:
        xc = tl.zeros([BLOCK_B, BLOCK_K], tl.float32)
        gc = tl.zeros([BLOCK_B, BLOCK_K], tl.float32)
        xx_all = tl.zeros([BLOCK_B], tl.float32)
        cc_all = tl.zeros([BLOCK_K], tl.float32)
        for d0 in range(0, d, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            md = rd < d
            xj = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)
            cj = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
            xc += _mm_t(xj, cj, IEEE)
            if GRAD:
                gc += _mm_t(_rows(g_ptr, rb, rd, mb, md, sgb, m, d), cj, IEEE)
            xx_all += tl.sum(xj * xj, 1)
            cc_all += tl.sum(cj * cj, 1)
    else:
        xc = _mm_t(x, c, IEEE)
        if GRAD:
            gc = _mm_t(g, c, IEEE)
        else:
            gc = xc
        xx_all = xx
        cc_all = cc
    return xc, gc, xx_all, cc_all


@triton.jit
def _lanes(pid, d, SPLIT: tl.constexpr, BLOCK_D: tl.constexpr):
    """(sub-space, chunk, this program's lanes): the grid's second axis is M, or M x cdiv(d, BLOCK_D)
    chunks of lanes when SPLIT (each program then writes one chunk)."""
    if SPLIT:
        chunks = tl.cdiv(d, BLOCK_D)
        m = pid // chunks
        j = pid % chunks
    else:
        m = pid
        j = pid * 0
    return m, j, j * BLOCK_D + tl.arange(0, BLOCK_D)


@_tuned()
@triton.jit
def _soft_fwd(x_ptr, c_ptr, z_ptr, B, K, d, sxb, scm, sck, szb, inv_tau,
              METRIC: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    m, _j, rd = _lanes(tl.program_id(1), d, SPLIT, BLOCK_D)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb, md = rb < B, rd < d
    x = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)
    xx = tl.sum(x * x, 1)
    m_i = tl.full([BLOCK_B], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_B], tl.float32)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        xc, _gc, xx_all, cc = _dots(x, c, x, xx, tl.sum(c * c, 1), x_ptr, c_ptr, x_ptr, rb, rk, mb, mk, sxb, scm,
                                    sck, sxb, m, d, False, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        s = tl.where(mk[None, :], _score(xc, xx_all, cc, inv_tau, METRIC), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(p, c, IEEE)
        m_i = m_new
    z = acc / l_i[:, None]
    tl.store(z_ptr + rb[:, None] * szb + (m * d + rd)[None, :], z.to(z_ptr.dtype.element_ty),
             mask=mb[:, None] & md[None, :])


@_tuned(backward=True)
@triton.jit
def _soft_bwd_rows(x_ptr, c_ptr, g_ptr, gx_ptr, lse_ptr, delta_ptr, B, K, M, d, sxb, scm, sck, sgb, inv_tau,
                   METRIC: tl.constexpr, PROBS: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad x for a block of rows (and one chunk of lanes when SPLIT); stores the row statistics (lse,
    delta) the codeword kernel needs.

    PROBS = 0: g is grad z [B, D] (soft_quantize); PROBS = 1: g is grad p [B, M, K] (assign_probs)."""
    pid, pm = tl.program_id(0), tl.program_id(1)
    m, j, rd = _lanes(pm, d, SPLIT, BLOCK_D)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb, md = rb < B, rd < d
    mask_x = mb[:, None] & md[None, :]
    x = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)
    xx = tl.sum(x * x, 1)
    if PROBS == 0:
        g = _rows(g_ptr, rb, rd, mb, md, sgb, m, d)
    else:
        g = x
    # pass 1: log-sum-exp and delta = sum_k p_k A_k (A = dL/dp)
    m_i = tl.full([BLOCK_B], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_B], tl.float32)
    pa = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        xc, gc, xx_all, cc = _dots(x, c, g, xx, tl.sum(c * c, 1), x_ptr, c_ptr, g_ptr, rb, rk, mb, mk, sxb, scm,
                                   sck, sgb, m, d, PROBS == 0, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        s = tl.where(mk[None, :], _score(xc, xx_all, cc, inv_tau, METRIC), float("-inf"))
        if PROBS == 0:
            a = gc
        else:
            a = tl.load(g_ptr + rb[:, None] * (M * K) + m * K + rk[None, :], mask=mb[:, None] & mk[None, :],
                        other=0.0).to(tl.float32)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        pa = pa * alpha + tl.sum(p * a, 1)
        m_i = m_new
    lse = m_i + tl.log(l_i)
    delta = pa / l_i
    first = mb & ((rb * 0 + j) == 0)  # the programs of the first chunk of lanes store the statistics
    tl.store(lse_ptr + rb * M + m, lse, mask=first)
    tl.store(delta_ptr + rb * M + m, delta, mask=first)
    # pass 2: dS = p (A - delta) / tau, grad x
    dx = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    rows = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        xc, gc, xx_all, cc = _dots(x, c, g, xx, tl.sum(c * c, 1), x_ptr, c_ptr, g_ptr, rb, rk, mb, mk, sxb, scm,
                                   sck, sgb, m, d, PROBS == 0, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        p = tl.where(mk[None, :], tl.exp(_score(xc, xx_all, cc, inv_tau, METRIC) - lse[:, None]), 0.0)
        if PROBS == 0:
            a = gc
        else:
            a = tl.load(g_ptr + rb[:, None] * (M * K) + m * K + rk[None, :], mask=mb[:, None] & mk[None, :],
                        other=0.0).to(tl.float32)
        ds = p * (a - delta[:, None]) * inv_tau
        dx += _mm(ds, c, IEEE)
        rows += tl.sum(ds, 1)
    if METRIC == 0:  # s = -||x - c||^2: ds/dx = -2 (x - c)
        dx = 2.0 * (dx - x * rows[:, None])
    tl.store(gx_ptr + rb[:, None] * sxb + (m * d + rd)[None, :], dx.to(gx_ptr.dtype.element_ty), mask=mask_x)


@_tuned(backward=True)
@triton.jit
def _soft_bwd_codewords(x_ptr, c_ptr, g_ptr, gc_ptr, lse_ptr, delta_ptr, B, K, M, d, sxb, scm, sck, sgb, inv_tau,
                        per_split, METRIC: tl.constexpr, PROBS: tl.constexpr, IEEE: tl.constexpr,
                        SPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad codebooks for a block of codewords (and one chunk of lanes when SPLIT) over one split of the
    batch (rows [s * per_split, (s + 1) * per_split)): partial sums gc [splits, M, K, d], summed by the
    launcher in a fixed order (deterministic, no atomics)."""
    pid, sp = tl.program_id(0), tl.program_id(2)
    m, _j, rd = _lanes(tl.program_id(1), d, SPLIT, BLOCK_D)
    rk = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    mk, md = rk < K, rd < d
    lo = sp * per_split
    hi = tl.minimum(lo + per_split, B)
    c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
    cc = tl.sum(c * c, 1)
    dcw = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    dcs = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    cols = tl.zeros([BLOCK_K], tl.float32)
    for b0 in range(lo, hi, BLOCK_B):
        rb = b0 + tl.arange(0, BLOCK_B)
        mb = rb < hi
        x = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)
        if PROBS == 0:
            g = _rows(g_ptr, rb, rd, mb, md, sgb, m, d)
        else:
            g = x
        lse = tl.load(lse_ptr + rb * M + m, mask=mb, other=0.0)
        delta = tl.load(delta_ptr + rb * M + m, mask=mb, other=0.0)
        xc, gc, xx_all, cc_all = _dots(x, c, g, tl.sum(x * x, 1), cc, x_ptr, c_ptr, g_ptr, rb, rk, mb, mk, sxb,
                                       scm, sck, sgb, m, d, PROBS == 0, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        p = tl.where(mb[:, None] & mk[None, :], tl.exp(_score(xc, xx_all, cc_all, inv_tau, METRIC) - lse[:, None]),
                     0.0)
        if PROBS == 0:
            a = gc
            dcw += _mm(tl.trans(p), g, IEEE)
        else:
            a = tl.load(g_ptr + rb[:, None] * (M * K) + m * K + rk[None, :], mask=mb[:, None] & mk[None, :],
                        other=0.0).to(tl.float32)
        ds = p * (a - delta[:, None]) * inv_tau
        dcs += _mm(tl.trans(ds), x, IEEE)
        cols += tl.sum(ds, 0)
    if METRIC == 0:  # ds/dc = 2 (x - c)
        dcs = 2.0 * (dcs - c * cols[:, None])
    tl.store(gc_ptr + (sp * M + m) * (K * d) + rk[:, None] * d + rd[None, :], dcw + dcs,
             mask=mk[:, None] & md[None, :])


@_tuned()
@triton.jit
def _probs_fwd(x_ptr, c_ptr, p_ptr, B, K, M, d, sxb, scm, sck, inv_tau, METRIC: tl.constexpr, IEEE: tl.constexpr,
               SPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """[B, M, K] probabilities; SPLIT: the scores are summed over chunks of BLOCK_D lanes (grid over M)."""
    pid, m = tl.program_id(0), tl.program_id(1)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    mb, md = rb < B, rd < d
    x = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)  # SPLIT: the first chunk, unused (_dots reads every lane)
    xx = tl.sum(x * x, 1)
    m_i = tl.full([BLOCK_B], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        xc, _gc, xx_all, cc = _dots(x, c, x, xx, tl.sum(c * c, 1), x_ptr, c_ptr, x_ptr, rb, rk, mb, mk, sxb, scm,
                                    sck, sxb, m, d, False, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        s = tl.where(mk[None, :], _score(xc, xx_all, cc, inv_tau, METRIC), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    lse = m_i + tl.log(l_i)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        xc, _gc, xx_all, cc = _dots(x, c, x, xx, tl.sum(c * c, 1), x_ptr, c_ptr, x_ptr, rb, rk, mb, mk, sxb, scm,
                                    sck, sxb, m, d, False, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        p = tl.exp(_score(xc, xx_all, cc, inv_tau, METRIC) - lse[:, None])
        tl.store(p_ptr + rb[:, None] * (M * K) + m * K + rk[None, :], p.to(p_ptr.dtype.element_ty),
                 mask=mb[:, None] & mk[None, :])


@_tuned()
@triton.jit
def _encode(x_ptr, c_ptr, out_ptr, B, K, M, d, sxb, scm, sck, METRIC: tl.constexpr, IEEE: tl.constexpr,
            SPLIT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Nearest codeword (smallest index on ties); no [B, M, K] is written. SPLIT: as in _probs_fwd."""
    pid, m = tl.program_id(0), tl.program_id(1)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    mb, md = rb < B, rd < d
    x = _rows(x_ptr, rb, rd, mb, md, sxb, m, d)
    best = tl.full([BLOCK_B], float("-inf"), tl.float32)
    arg = tl.zeros([BLOCK_B], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < K
        c = _codewords(c_ptr, rk, rd, mk, md, scm, sck, m)
        dot, _gc, _xx, cc = _dots(x, c, x, best, tl.sum(c * c, 1), x_ptr, c_ptr, x_ptr, rb, rk, mb, mk, sxb, scm,
                                  sck, sxb, m, d, False, IEEE, SPLIT, BLOCK_B, BLOCK_K, BLOCK_D)
        if METRIC == 0:
            s = 2.0 * dot - cc[None, :]  # ||x||^2 is common to all k
        else:
            s = dot
        s = tl.where(mk[None, :], s, float("-inf"))
        bmax = tl.max(s, 1)
        barg = tl.argmax(s, 1, tie_break_left=True).to(tl.int32) + k0
        better = bmax > best  # strict: ties keep the earlier block
        arg = tl.where(better, barg, arg)
        best = tl.where(better, bmax, best)
    tl.store(out_ptr + rb * M + m, arg, mask=mb)


# ---------------------------------------------------------------- launchers


def _prep(x: torch.Tensor, codebooks: torch.Tensor, metric: str):
    """Contiguous inputs and the kernels' METRIC (0: l2, 1: ip)."""
    if metric not in ("l2", "ip"):
        raise ValueError(f"the soft kernels take metric l2 or ip, got {metric!r}")
    return x.contiguous(), codebooks.contiguous(), 0 if metric == "l2" else 1


def _ieee(*ts: torch.Tensor) -> bool:
    """float32 inputs keep float32 accuracy (3xTF32 dots: three tensor-core products of a split into high and
    low TF32 parts, instead of IEEE FMA loops that need every register and spill); half inputs use TF32."""
    return all(t.dtype == torch.float32 for t in ts)


def lanes(d: int, ieee: bool, backward: bool = False) -> dict:
    """The lane meta-parameters of the soft kernels for sub-vectors of d lanes: BLOCK_D (a power of two) and
    SPLIT. A kernel holds at most 128 lanes as one tile, 64 in the 3xTF32 backward (whose tiles of 128 lanes
    spill at every configuration: benchmarks/gpu_static.py). Wider sub-vectors are read in chunks of BLOCK_D
    lanes (SPLIT: 32 in float32, 64 in half precision, the widths that have configurations without spills),
    and the kernels that write lanes run one program per chunk."""
    if d <= (64 if backward and ieee else 128):
        return dict(BLOCK_D=_pow2(d), SPLIT=False)
    return dict(BLOCK_D=32 if ieee else 64, SPLIT=True)


def _chunks(meta: dict, d: int) -> int:
    return triton.cdiv(d, meta["BLOCK_D"]) if meta["SPLIT"] else 1


def soft_quantize(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    xs, cb, METRIC = _prep(x, codebooks, metric)
    B, (M, K, d) = xs.shape[0], cb.shape
    z = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if B == 0:
        return z
    meta = dict(METRIC=METRIC, IEEE=_ieee(xs, cb), **lanes(d, _ieee(xs, cb)))
    _launch(_soft_fwd, True, B, K, M * _chunks(meta, d), (xs, cb, z, B, K, d, xs.stride(0), cb.stride(0),
                                                          cb.stride(1), z.stride(0), 1.0 / tau), meta)
    return z


SPLIT_ROWS = 2048  # batch rows per split of the codeword gradient (at least)
MAX_SPLITS = 64


def batch_splits(B: int) -> int:
    """Splits of the batch for the codeword gradient: enough programs to fill a large GPU (K / BLOCK_K x M x
    splits; 64 x 32 = 2,048 at B = 65,536, K = 256, M = 16), each over at least SPLIT_ROWS rows."""
    return max(1, min(MAX_SPLITS, triton.cdiv(B, SPLIT_ROWS)))


def _backward(grad, x, codebooks, tau, metric, probs: bool, splits: int | None = None):
    xs, cb, METRIC = _prep(x, codebooks, metric)
    B, (M, K, d) = xs.shape[0], cb.shape
    g = grad.to(torch.float32).contiguous()
    gx = torch.zeros(xs.shape, dtype=torch.float32, device=x.device)
    gc = torch.zeros(cb.shape, dtype=torch.float32, device=x.device)
    if B:
        S = batch_splits(B) if splits is None else max(1, min(int(splits), B))
        per_split = triton.cdiv(B, S)
        lse = torch.empty((B, M), dtype=torch.float32, device=x.device)  # O(B * M) row statistics
        delta = torch.empty_like(lse)
        args = (B, K, M, d, xs.stride(0), cb.stride(0), cb.stride(1), g.stride(0), 1.0 / tau)
        meta = dict(METRIC=METRIC, PROBS=int(probs), IEEE=_ieee(xs, cb), **lanes(d, _ieee(xs, cb), backward=True))
        programs_m = M * _chunks(meta, d)
        _launch(_soft_bwd_rows, True, B, K, programs_m, (xs, cb, g, gx, lse, delta, *args), meta)
        parts = torch.empty((S, M, K, d), dtype=torch.float32, device=x.device)
        _launch(_soft_bwd_codewords, False, B, K, programs_m, (xs, cb, g, parts, lse, delta, *args, per_split), meta,
                S)
        gc = parts[0] if S == 1 else parts.sum(0)  # one fixed-order reduction: deterministic
    return gx.to(x.dtype), gc.to(codebooks.dtype)


def soft_quantize_backward(grad, x, codebooks, tau: float, metric: str):
    return _backward(grad, x, codebooks, tau, metric, probs=False)


def assign_probs(x: torch.Tensor, codebooks: torch.Tensor, tau: float, metric: str) -> torch.Tensor:
    xs, cb, METRIC = _prep(x, codebooks, metric)
    B, (M, K, d) = xs.shape[0], cb.shape
    p = torch.empty((B, M, K), dtype=x.dtype, device=x.device)
    if B:
        meta = dict(METRIC=METRIC, IEEE=_ieee(xs, cb), **lanes(d, _ieee(xs, cb)))
        _launch(_probs_fwd, True, B, K, M, (xs, cb, p, B, K, M, d, xs.stride(0), cb.stride(0), cb.stride(1),
                                            1.0 / tau), meta)
    return p


def assign_probs_backward(grad, x, codebooks, tau: float, metric: str):
    return _backward(grad, x, codebooks, tau, metric, probs=True)


def encode(x: torch.Tensor, codebooks: torch.Tensor, metric: str, out_dtype: torch.dtype) -> torch.Tensor:
    xs, cb, METRIC = _prep(x, codebooks, metric)
    B, (M, K, d) = xs.shape[0], cb.shape
    out = torch.empty((B, M), dtype=torch.int32, device=x.device)
    if B:
        _launch(_encode, True, B, K, M, (xs, cb, out, B, K, M, d, xs.stride(0), cb.stride(0), cb.stride(1)),
                dict(METRIC=METRIC, IEEE=_ieee(xs, cb), **lanes(d, _ieee(xs, cb))))
    return out.to(out_dtype)
