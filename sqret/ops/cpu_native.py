"""The ``cpu_native`` backend: ADC scan + top-k (8-bit and 4-bit fast scan) and encode from ``sqret._cpu``.

Buffers go to C++ by address, without copies, when they are already contiguous and of the kernel's dtype.
Threads: ``torch.get_num_threads()``. Results equal the reference's (same summation order, ties by id).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import checks, reference
from .checks import code_dtype
from .refine import STORE_DTYPES
from .registry import Impl, declines_float64, mark_unavailable, register

_ABI = 2  # sqret._cpu.ABI of the sources this module calls

try:
    from .. import _cpu
except ImportError as err:  # not built: pure-Python install, or no compiler
    _cpu = None
    mark_unavailable("cpu_native", f"native extension sqret._cpu is not built ({err})")
else:
    if getattr(_cpu, "FASTSCAN_BLOCK", None) != reference.FASTSCAN_BLOCK or getattr(_cpu, "ABI", 1) != _ABI:
        _cpu = None  # a stale build: another fast-scan layout or other entry arguments
        mark_unavailable("cpu_native", "sqret._cpu is stale (built from older sources): rebuild it "
                                       "(pip install -e ., as make test does)")

_WIDTH = {torch.uint8: 1, torch.int16: 2, torch.int32: 4}


def _threads() -> int:
    return torch.get_num_threads() or 1


def _outputs(Q: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # through NumPy: half the cost of torch.empty(..., dtype=...), which counts for a single query
    return torch.from_numpy(np.empty((Q, k), np.float32)), torch.from_numpy(np.empty((Q, k), np.int64))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """t as float32 contiguous (itself when it is already: conversions cost a microsecond even when no-ops)."""
    return t if t.dtype is torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous()


def _signed_lut(lut: torch.Tensor, largest: bool) -> torch.Tensor:
    """float32 contiguous, negated for largest-first: the kernels always keep the smallest."""
    t = lut.to(torch.float32)
    return (-t if largest else t).contiguous()


def _finish(v: torch.Tensor, i: torch.Tensor, largest: bool):
    return (v.neg_() if largest else v), i


def adc_topk(lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool):
    Q, M, K = lut.shape
    N = codes.shape[0]
    if packed:
        B = reference.FASTSCAN_BLOCK
        blocks = torch.empty(((N + B - 1) // B, M, B // 2), dtype=torch.uint8)
        if N:
            src = codes.contiguous()  # bound to a name: the buffer must outlive the native call
            _cpu.pack_fastscan(src.data_ptr(), N, M, blocks.data_ptr(), _threads())
        return adc_topk_fastscan(lut, blocks, N, k, largest)
    if codes.dtype not in _WIDTH:
        codes = codes.to(torch.int32)
    table, c = _signed_lut(lut, largest), codes.contiguous()
    v, i = _outputs(Q, k)
    if Q:
        _cpu.adc_topk(table.data_ptr(), Q, M, K, c.data_ptr() if N else 1, _WIDTH[c.dtype], N, k, _threads(),
                      v.data_ptr(), i.data_ptr())
    return _finish(v, i, largest)


def adc_topk_fastscan(lut: torch.Tensor, blocks: torch.Tensor, n: int, k: int, largest: bool, exact: bool = True):
    Q, M, _ = lut.shape
    table, b = _signed_lut(lut, largest), blocks.contiguous()
    v, i = _outputs(Q, k)
    if Q:
        _cpu.adc_topk_fastscan(table.data_ptr(), Q, M, b.data_ptr() if n else 1, n, k, _threads(),
                               v.data_ptr(), i.data_ptr(), exact)
    return _finish(v, i, largest)


_LUT_METRIC = {"l2": 0, "ip": 1, "cos": 1, "l2_sqrt": 2}


def build_lut(q: torch.Tensor, codebooks: torch.Tensor, metric: str, dtype: torch.dtype | None) -> torch.Tensor:
    M, K, d = codebooks.shape
    xs, C = reference.kernel_inputs(q, codebooks, metric)
    out = torch.empty((q.shape[0], M, K), dtype=torch.float32)
    if q.shape[0]:
        args = (xs.data_ptr(), q.shape[0], C.data_ptr(), M, K, d, _LUT_METRIC[metric], out.data_ptr())
        _cpu.build_lut(*args, _threads())
    return out if dtype in (None, torch.float32) else out.to(dtype)


def pq_search(queries: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, n: int | None, k: int, metric: str,
              exact: bool = True, labels: torch.Tensor | None = None, check_finite: bool = False):
    """Tables and scan in one native call (no LUT tensor); positions mapped to labels and the finite check of
    queries and codebooks done there too."""
    M, K, d = codebooks.shape
    xs, C = reference.kernel_inputs(queries, codebooks, metric)  # all bound to names: they outlive the call
    c = codes if codes.is_contiguous() else codes.contiguous()
    lab = labels if labels is None or labels.is_contiguous() else labels.contiguous()
    Q = xs.shape[0]
    N = c.shape[0] if n is None else n
    v, i = _outputs(Q, k)
    if Q:
        try:
            _cpu.pq_search(xs.data_ptr(), Q, C.data_ptr(), M, K, d, _LUT_METRIC[metric], metric in ("ip", "cos"),
                           c.data_ptr() if N else 1, 0 if n is not None else _WIDTH[c.dtype], N, k, _threads(),
                           v.data_ptr(), i.data_ptr(), exact, 0 if lab is None else lab.data_ptr(),
                           check_finite)  # results in the metric's own sign
        except ValueError as err:
            if "lut contains NaN" in str(err):
                raise ValueError("the distance tables contain NaN: check the queries and codebooks") from None
            raise
    elif check_finite:  # no query, no native call: the codebooks are still checked
        checks.finite(codebooks, "codebooks")
    return v, i


def _pq_search_accepts(queries, codebooks, codes, n, k, metric, exact=True, labels=None, check_finite=False
                       ) -> str | None:
    if n is None and codes.dtype not in _WIDTH:
        return f"codes of dtype {codes.dtype}: the kernel reads uint8, int16 or int32"
    return declines_float64(queries, codebooks)


ENCODE_MAX_DSUB = 32  # from this sub-dimension on the reference's GEMM is faster


def _encode_accepts(x, codebooks, metric) -> str | None:
    if codebooks.shape[2] >= ENCODE_MAX_DSUB:
        return f"dsub = {codebooks.shape[2]} >= {ENCODE_MAX_DSUB}: the reference's GEMM is faster"
    return declines_float64(x, codebooks)


def encode(x: torch.Tensor, codebooks: torch.Tensor, metric: str) -> torch.Tensor:
    M, K, d = codebooks.shape
    C = codebooks.to(torch.float32)
    if metric == "cos":  # argmax of cos(x, c) = argmax of x . c / ||c||
        C = F.normalize(C, dim=-1)
    xs, C = x.to(torch.float32).contiguous(), C.contiguous()
    out = torch.empty((x.shape[0], M), dtype=torch.int32)
    if x.shape[0]:
        _cpu.encode(xs.data_ptr(), x.shape[0], C.data_ptr(), M, K, d, 0 if metric == "l2" else 1,
                    out.data_ptr(), _threads())
    return out.to(code_dtype(K))


def _refine_accepts(queries, vectors, candidates, k, metric, labels=None, sq8=None) -> str | None:
    if not vectors.is_cpu or not vectors.is_contiguous():
        return "the stored vectors are not a contiguous CPU tensor (the kernel reads them in place)"
    return None


def refine_topk(queries, vectors, candidates, k: int, metric: str, labels=None, sq8=None):
    q = queries.to(torch.float32).contiguous()
    c = candidates.contiguous()
    lab = labels.contiguous() if labels is not None else None
    vmin, scale = (sq8[0].contiguous(), sq8[1].contiguous()) if sq8 is not None else (None, None)
    Q, kc = c.shape
    n, d = vectors.shape
    v, i = _outputs(Q, k)
    if Q:
        _cpu.refine_topk(q.data_ptr(), Q, d, vectors.data_ptr() if n else 0, STORE_DTYPES[vectors.dtype], n,
                         vmin.data_ptr() if vmin is not None else 0, scale.data_ptr() if scale is not None else 0,
                         c.data_ptr() if kc else 0, kc, lab.data_ptr() if lab is not None else 0, k,
                         0 if metric == "l2" else 1, _threads(), v.data_ptr(), i.data_ptr())
    return v, i


def smallest_k_rows(dist: torch.Tensor, k: int) -> torch.Tensor:
    """dist float32 contiguous [Q, n] (ops.coarse_probe makes it so)."""
    Q, n = dist.shape
    out = torch.from_numpy(np.empty((Q, k), np.int64))
    if Q:
        _cpu.smallest_k_rows(dist.data_ptr(), Q, n, k, out.data_ptr(), _threads())
    return out


def _probe_inputs(centroids, metric: str, centroid_norms, centroids_t):
    """(centroids, centroids transposed [d, nlist], squared norms [nlist] for l2 else None), float32."""
    cen = _f32(centroids)
    ct = centroids_t if centroids_t is not None else cen.T.contiguous()
    norms = None
    if metric == "l2":
        norms = _f32(centroid_norms) if centroid_norms is not None else (cen * cen).sum(1)
    return cen, ct, norms


def coarse_probe(queries, centroids, nprobe: int, metric: str, centroid_norms=None, centroids_t=None):
    """float32 CPU queries and centroids (float64 declined: the reference's)."""
    q = _f32(queries)
    cen, ct, norms = _probe_inputs(centroids, metric, centroid_norms, centroids_t)
    Q, d = q.shape
    out = torch.from_numpy(np.empty((Q, nprobe), np.int64))
    if Q:
        _cpu.coarse_probe(q.data_ptr(), Q, d, ct.data_ptr(), norms.data_ptr() if norms is not None else 0,
                          cen.shape[0], nprobe, 0 if metric == "l2" else 1, _threads(), out.data_ptr())
    return out


def ivf_search(queries, centroids, codebooks, lists, probes, k: int, metric: str, precomputed=None, exact=True,
               by_residual=True, sorted=True):  # noqa: A002 (torch.topk's name)
    """lists: an ops.InvertedLists, which holds the arrays whose addresses it lists (alive through the call)."""
    pr = probes if probes.dtype is torch.int64 and probes.is_contiguous() else probes.to(torch.int64).contiguous()
    return _ivf(queries, centroids, codebooks, lists, pr, pr.shape[1], k, metric, precomputed, exact, by_residual,
                sorted, None, None)


def ivf_probe_search(queries, centroids, codebooks, lists, nprobe: int, k: int, metric: str, precomputed=None,
                     exact=True, by_residual=True, sorted=True, centroid_norms=None,  # noqa: A002
                     centroids_t=None):
    """ivf_search over the nprobe nearest lists of each query, found in the same native call (coarse_probe's)."""
    cen, ct, norms = _probe_inputs(centroids, metric, centroid_norms, centroids_t)
    return _ivf(queries, cen, codebooks, lists, None, nprobe, k, metric, precomputed, exact, by_residual, sorted, ct,
                norms)


def ivf_refine_search(queries, centroids, codebooks, lists, nprobe: int, k: int, metric: str, precomputed=None,
                      exact=True, by_residual=True, centroid_norms=None, centroids_t=None, refine=None):
    """The probe, the scan of refine.candidates per query and their re-rank in one native pass per query."""
    cen, ct, norms = _probe_inputs(centroids, metric, centroid_norms, centroids_t)
    return _ivf(queries, cen, codebooks, lists, None, nprobe, refine.candidates, metric, precomputed, exact,
                by_residual, False, ct, norms, refine, k)


def _refine_search_accepts(queries, centroids, codebooks, *args) -> str | None:
    return declines_float64(queries, centroids, codebooks) or _refine_accepts(None, args[-1].vectors, None, 0, "")


def _ivf(queries, centroids, codebooks, lists, probes, nprobe, k, metric, precomputed, exact, by_residual, sorted,
         ct, norms, refine=None, k_out=0):  # noqa: A002
    """refine (an ops.Refinement): the k = refine.candidates best re-ranked in the same pass, k_out written."""
    M, K, _ = codebooks.shape
    pre = _f32(precomputed) if precomputed is not None and metric == "l2" else None
    Q, d = queries.shape
    q, cen, cb = _f32(queries), _f32(centroids), _f32(codebooks)
    c_addr, i_addr, sizes = lists.code_addresses, lists.id_addresses, lists.sizes
    v, i = _outputs(Q, k_out if refine is not None else k)
    if not Q:
        return v, i
    args = (c_addr.data_ptr(), i_addr.data_ptr(), sizes.data_ptr(), len(lists),
            probes.data_ptr() if probes is not None else 0, nprobe, k, 0 if metric == "l2" else 1,
            pre.data_ptr() if pre is not None else 0, by_residual)
    rr = (0, 0, 0, 0, 0, 0, 0)
    if refine is not None:  # the tensors below stay referenced through the call
        rows = refine.vectors
        lab = refine.labels.contiguous() if refine.labels is not None else None
        vmin, scale = (_f32(refine.sq8[0]), _f32(refine.sq8[1])) if refine.sq8 is not None else (None, None)
        rr = (rows.data_ptr() if rows.shape[0] else 0, STORE_DTYPES[rows.dtype], rows.shape[0],
              vmin.data_ptr() if vmin is not None else 0, scale.data_ptr() if scale is not None else 0,
              lab.data_ptr() if lab is not None else 0, k_out)
    out = (v.data_ptr(), i.data_ptr(), sorted, ct.data_ptr() if ct is not None else 0,
           norms.data_ptr() if norms is not None else 0, *rr)
    if lists.layout == "fastscan":
        _cpu.ivf_fastscan(q.data_ptr(), Q, d, cen.data_ptr(), cb.data_ptr(), M, *args, exact, _threads(), *out)
    else:
        _cpu.ivf_search(q.data_ptr(), Q, d, cen.data_ptr(), cb.data_ptr(), M, K, *args, _threads(), *out)
    return v, i



def _prepared(searcher) -> tuple:
    """The searcher's static native arguments (and the float32 tensors they point into, kept referenced)."""
    p = searcher.prepared.get("cpu_native")
    if p is None:
        cen, ct, norms = _probe_inputs(searcher.centroids, searcher.metric, searcher.centroid_norms,
                                       searcher.centroids_t)
        cb, lists, metric = _f32(searcher.codebooks), searcher.lists, searcher.metric
        pre = _f32(searcher.precomputed) if searcher.precomputed is not None and metric == "l2" else None
        p = searcher.prepared["cpu_native"] = (
            (cen, cb, ct, norms, pre),  # alive with the searcher
            lists.layout == "fastscan", cen.data_ptr(), cb.data_ptr(), cb.shape[0], cb.shape[1],
            (lists.code_addresses.data_ptr(), lists.id_addresses.data_ptr(), lists.sizes.data_ptr(), len(lists), 0),
            (0 if metric == "l2" else 1, pre.data_ptr() if pre is not None else 0, searcher.by_residual),
            (ct.data_ptr(), norms.data_ptr() if norms is not None else 0))
    return p


def ivf_searcher(searcher, queries, nprobe: int, k: int, exact: bool, sorted: bool, refine=None):  # noqa: A002
    """IVFSearcher.search in one native call (the probe, the scan and, with refine, the re-rank)."""
    _, fast, cen, cb, M, K, lists, how, caches = _prepared(searcher)
    q = _f32(queries)
    Q, d = q.shape
    v, i = _outputs(Q, k)
    if not Q:
        return v, i
    kc, rr = k, (0, 0, 0, 0, 0, 0, 0)
    if refine is not None:  # the tensors below stay referenced through the call
        rows, kc = refine.vectors, refine.candidates
        lab = refine.labels.contiguous() if refine.labels is not None else None
        vmin, scale = (_f32(refine.sq8[0]), _f32(refine.sq8[1])) if refine.sq8 is not None else (None, None)
        rr = (rows.data_ptr() if rows.shape[0] else 0, STORE_DTYPES[rows.dtype], rows.shape[0],
              vmin.data_ptr() if vmin is not None else 0, scale.data_ptr() if scale is not None else 0,
              lab.data_ptr() if lab is not None else 0, k)
    out = (v.data_ptr(), i.data_ptr(), sorted and refine is None, *caches, *rr)
    if fast:
        _cpu.ivf_fastscan(q.data_ptr(), Q, d, cen, cb, M, *lists, nprobe, kc, *how, exact, _threads(), *out)
    else:
        _cpu.ivf_search(q.data_ptr(), Q, d, cen, cb, M, K, *lists, nprobe, kc, *how, _threads(), *out)
    return v, i


def _searcher_accepts(searcher, queries, nprobe, k, exact, sorted, refine=None) -> str | None:  # noqa: A002
    return declines_float64(queries, searcher.centroids, searcher.codebooks) or (
        None if refine is None else _refine_accepts(None, refine.vectors, None, 0, ""))

if _cpu is not None:
    adc_topk.checks_nan = adc_topk_fastscan.checks_nan = True  # the kernels raise ValueError on a NaN in the LUT
    ivf_search.checks_probes = True  # the kernels raise ValueError on a list number outside [-1, nlist)
    refine_topk.checks_candidates = True  # ... and on a candidate row outside [-1, n)
    register(
        "cpu_native",
        ("cpu",),
        {
            "adc_topk": Impl(adc_topk, lambda lut, *_: declines_float64(lut)),
            "adc_topk_fastscan": adc_topk_fastscan,
            "build_lut": Impl(build_lut, lambda q, codebooks, *_: declines_float64(q, codebooks)),
            "encode": Impl(encode, _encode_accepts),
            "ivf_search": Impl(ivf_search, lambda q, cen, cb, *_: declines_float64(q, cen, cb)),
            "ivf_probe_search": Impl(ivf_probe_search, lambda q, cen, cb, *_: declines_float64(q, cen, cb)),
            "smallest_k_rows": smallest_k_rows,
            "coarse_probe": Impl(coarse_probe, lambda q, cen, *_: declines_float64(q, cen)),
            "refine_topk": Impl(refine_topk, _refine_accepts),
            "ivf_refine_search": Impl(ivf_refine_search, _refine_search_accepts),
            "ivf_searcher": Impl(ivf_searcher, _searcher_accepts),
            "pq_search": Impl(pq_search, _pq_search_accepts),
        },
        priority=10,
    )
