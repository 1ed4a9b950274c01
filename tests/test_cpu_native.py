"""The cpu_native backend (csrc/cpu) against the reference: values and ids equal, ties by id, every SIMD path."""

import contextlib
import math
import os

import numpy as np
import pytest
import torch

import sqret
from sqret import ops

NATIVE = {b.name: b for b in sqret.backends()}["cpu_native"]
if not NATIVE.available:
    if os.environ.get("SQRET_REQUIRE_NATIVE") == "1":
        raise RuntimeError(f"SQRET_REQUIRE_NATIVE=1 but cpu_native is unavailable: {NATIVE.reason}")
    pytest.skip(f"cpu_native unavailable: {NATIVE.reason}", allow_module_level=True)

from sqret import _cpu  # noqa: E402

LEVELS = [lv for lv in ("scalar", "avx2", "avx512") if ["scalar", "avx2", "avx512"].index(lv)
          <= ["scalar", "avx2", "avx512"].index(_cpu.best_simd())]


@contextlib.contextmanager
def simd(level):
    old = _cpu.active_simd()
    _cpu.set_simd(level)
    try:
        yield
    finally:
        _cpu.set_simd(old)


@contextlib.contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def both(fn):
    """(native result, reference result) of fn()."""
    with sqret.use_backend("cpu_native"):
        got = fn()
    with sqret.use_backend("reference"):
        want = fn()
    return got, want


def assert_same(got, want):
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())


def _lut(rng, Q, M, K, ties):
    if ties:  # small integers: many exact ties, every summation order exact
        return torch.from_numpy(rng.integers(0, 4, (Q, M, K)).astype(np.float32))
    return torch.from_numpy(rng.standard_normal((Q, M, K)).astype(np.float32))


CASES = [  # (Q, M, N, k)
    (1, 16, 1000, 10),
    (3, 8, 4099, 100),
    (17, 3, 333, 333),
    (5, 1, 50, 64),
    (2, 17, 1, 5),
    (0, 4, 10, 3),
    (4, 4, 0, 7),
    (40, 16, 20000, 1),
    (2, 64, 5000, 4999),
]


@pytest.mark.parametrize("Q,M,N,k", CASES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("ties", [True, False])
def test_byte_scan_equals_reference(Q, M, N, k, dtype, ties):
    rng = np.random.default_rng(Q * 1000 + M * 10 + N)
    K = 256 if dtype == torch.uint8 else 300
    lut = _lut(rng, Q, M, K, ties)
    codes = torch.from_numpy(rng.integers(0, K, (N, M))).to(dtype)
    for largest in (False, True):
        for n_threads in (1, 2):
            with threads(n_threads):
                assert_same(*both(lambda: ops.adc_topk(lut, codes, k, largest=largest)))  # noqa: B023


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("Q,M,N,k", CASES + [(3, 2, 100000, 50), (1, 33, 777, 40)])
@pytest.mark.parametrize("ties", [True, False])
def test_fast_scan_equals_reference_on_every_simd_path(level, Q, M, N, k, ties):
    rng = np.random.default_rng(Q * 1000 + M * 10 + N + 7)
    lut = _lut(rng, Q, M, 16, ties)
    codes = torch.from_numpy(rng.integers(0, 16, (N, M)).astype(np.uint8))
    packed, fast = ops.pack4(codes), ops.fastscan_pack(codes)
    assert torch.equal(ops.fastscan_unpack(fast), codes)
    with simd(level):
        for largest in (False, True):
            for n_threads in (1, 2):
                with threads(n_threads):
                    assert_same(*both(lambda: ops.adc_topk(lut, packed, k, largest=largest, packed=True)))  # noqa: B023
                    assert_same(*both(lambda: ops.adc_topk(lut, fast, k, largest=largest)))  # noqa: B023


@pytest.mark.parametrize("level", LEVELS)
def test_fast_scan_is_exact_when_quantization_is_coarse(level):
    """One sub-space with a huge range makes the uint8 LUT coarse everywhere else: the re-rank must still
    return the exact top-k, including near-ties the quantized sums cannot tell apart."""
    rng = np.random.default_rng(5)
    lut = torch.from_numpy(rng.standard_normal((4, 8, 16)).astype(np.float32)) * 1e-3
    lut[:, 0, 15] = 1e4
    lut[1] = torch.round(lut[1] * 1e4) / 1e4  # ties
    codes = torch.from_numpy(rng.integers(0, 15, (30000, 8)).astype(np.uint8))
    codes[::97, 0] = 15
    with simd(level):
        for k in (1, 10, 1000):
            assert_same(*both(lambda: ops.adc_topk(lut, ops.pack4(codes), k, packed=True)))  # noqa: B023
            assert_same(*both(lambda: ops.adc_topk(lut, ops.pack4(codes), k, packed=True, largest=True)))  # noqa: B023


def test_infinite_lut_entries():
    lut = torch.randn(2, 4, 16)
    lut[0, 1, 3] = float("inf")
    codes = torch.randint(0, 16, (500, 4), dtype=torch.uint8)
    assert_same(*both(lambda: ops.adc_topk(lut, codes, 500)))
    assert_same(*both(lambda: ops.adc_topk(lut, ops.pack4(codes), 500, packed=True)))


def test_real_codes(data_dir):
    from sqret.cluster import train_pq
    from sqret.data import read_bvecs, read_fvecs

    sift = torch.from_numpy(read_fvecs(data_dir / "siftsmall" / "siftsmall_base.fvecs"))
    q = torch.from_numpy(read_fvecs(data_dir / "siftsmall" / "siftsmall_query.fvecs"))
    big = torch.from_numpy(read_bvecs(data_dir / "bigann10k" / "bigann10k_base.bvecs").astype(np.float32))
    for base, queries in ((sift, q), (big, big[:100])):
        C8 = train_pq(base, 16, 256, iters=4, progress=False)
        C4 = train_pq(base, 16, 16, iters=4, progress=False)
        codes8, codes4 = ops.encode(base, C8), ops.encode(base, C4)
        lut8, lut4, ip8 = ops.build_lut(queries, C8), ops.build_lut(queries, C4), ops.build_lut(queries, C8, "ip")
        for k in (1, 10, 100, 10000):
            assert_same(*both(lambda: ops.adc_topk(lut8, codes8, k)))  # noqa: B023
            assert_same(*both(lambda: ops.adc_topk(lut4, ops.pack4(codes4), k, packed=True)))  # noqa: B023
            assert_same(*both(lambda: ops.adc_topk(ip8, codes8, k, largest=True)))  # noqa: B023


@pytest.mark.parametrize("metric", ops.METRICS)
@pytest.mark.parametrize("B,M,K,d", [(1000, 8, 256, 4), (37, 3, 5, 7), (0, 2, 16, 3), (513, 16, 16, 8)])
def test_encode_picks_a_nearest_codeword(metric, B, M, K, d):
    x, C = torch.randn(B, M * d), torch.randn(M, K, d)
    got, want = both(lambda: ops.encode(x, C, metric))
    assert got.dtype == want.dtype == ops.code_dtype(K) and got.shape == want.shape
    # equal except at float near-ties: the chosen codeword's score is within rounding of the best
    Cw = torch.nn.functional.normalize(C, dim=-1) if metric == "cos" else C
    xs = x.view(B, M, 1, d)
    s = -((xs - Cw) ** 2).sum(-1) if metric == "l2" else (xs * Cw).sum(-1)  # [B, M, K]
    chosen = s.gather(2, got.long().unsqueeze(-1)).squeeze(-1)
    assert (chosen >= s.max(-1).values - 1e-4 * (1 + s.abs().max())).all() if B else True
    assert (got == want).float().mean() > 0.99 if B else True


def test_float64_falls_back_to_reference_results():
    lut = torch.randn(2, 4, 16, dtype=torch.float64)
    codes = torch.randint(0, 16, (100, 4), dtype=torch.uint8)
    got, want = both(lambda: ops.adc_topk(lut, codes, 5))
    assert got[0].dtype == torch.float64
    assert_same(got, want)


def test_bad_input_is_an_error_not_a_crash():
    with pytest.raises(ValueError, match="null buffer"):
        _cpu.adc_topk(0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="codes must be 1, 2 or 4 bytes"):
        x = torch.zeros(4)
        _cpu.adc_topk(x.data_ptr(), 1, 1, 1, x.data_ptr(), 8, 1, 1, 1, x.data_ptr(), x.data_ptr())
    with pytest.raises(ValueError, match="bad sizes"):
        x = torch.zeros(4)
        _cpu.adc_topk(x.data_ptr(), 1, 0, 1, x.data_ptr(), 1, 1, 1, 1, x.data_ptr(), x.data_ptr())
    with pytest.raises(ValueError, match="unknown SIMD level"):
        _cpu.set_simd("sse9")
    x, v, i = torch.zeros(64), torch.empty(1), torch.empty(1, dtype=torch.int64)
    for threads_ in (1, 2):  # no queries (or no codes): nothing to do, no division by zero anywhere
        for Q, N in ((0, 5), (0, 0), (1, 0)):
            _cpu.adc_topk(x.data_ptr(), Q, 1, 1, x.data_ptr(), 1, N, 1, threads_, v.data_ptr(), i.data_ptr())
            for exact in (True, False):
                _cpu.adc_topk_fastscan(x.data_ptr(), Q, 1, x.data_ptr(), N, 1, threads_, v.data_ptr(), i.data_ptr(),
                                       exact)
            for code_bytes in (0, 1):
                _cpu.pq_search(x.data_ptr(), Q, x.data_ptr(), 1, 16, 1, 0, True, x.data_ptr(), code_bytes, N, 1,
                               threads_, v.data_ptr(), i.data_ptr(), True, 0, 1)
            if Q:  # the last call negated (largest first): an empty result is -inf, id -1
                assert v.item() == -math.inf and i.item() == -1
    with sqret.use_backend("cpu_native"), pytest.raises(ValueError, match="codes must lie"):
        ops.adc_topk(torch.randn(1, 2, 8), torch.full((3, 2), 8, dtype=torch.uint8), 1)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("M,K,k", [(4, 16, 10), (8, 256, 50), (5, 7, 300)])
def test_ivf_search_equals_reference(metric, M, K, k):
    """Integer-valued queries, centroids and codebooks make both LUT formulas exact, and ties common:
    values and ids (ties by smaller id) must be equal."""
    rng = np.random.default_rng(M * K)
    d, nlist, Q, nprobe = 2 * M, 12, 9, 5
    t = torch.from_numpy
    q = t(rng.integers(-3, 4, (Q, d)).astype(np.float32))
    cen = t(rng.integers(-3, 4, (nlist, d)).astype(np.float32))
    cb = t(rng.integers(-2, 3, (M, K, 2)).astype(np.float32))
    sizes = rng.integers(0, 200, nlist)
    sizes[3] = 0
    codes = [t(rng.integers(0, K, (n, M)).astype(np.uint8)) for n in sizes]
    ids = [t(rng.permutation(10**6)[:n].astype(np.int64)) for n in sizes]
    probes = t(np.stack([rng.permutation(nlist)[:nprobe] for _ in range(Q)]).astype(np.int64))
    probes[0, -1] = -1  # an empty probe slot
    got, want = both(lambda: ops.ivf_search(q, cen, cb, codes, ids, probes, k, metric))
    assert_same(got, want)
    assert (got[1] >= 0).sum() > 0


@pytest.mark.parametrize("level", LEVELS)
def test_smallest_k_rows_equals_a_stable_sort(level):
    """The coarse probe's selection (8 values a compare where SIMD): positions of the k smallest of each row,
    sorted, ties by position, as a stable sort; odd row lengths (the 8-wide tail), k up to n, heavy ties."""
    g = torch.Generator().manual_seed(7)
    for n in (1, 5, 8, 9, 31, 200, 1001):
        for k in sorted({1, 2, 3, 10, n // 2 + 1, n} - {0}):
            if k > n:
                continue
            for dist in (torch.randn(13, n, generator=g), torch.randint(0, 4, (13, n), generator=g).float()):
                want = torch.sort(dist, dim=1, stable=True).indices[:, :k]
                with simd(level), sqret.use_backend("cpu_native"):
                    got = ops.registry.run("smallest_k_rows", "cpu", dist.contiguous(), k)
                assert torch.equal(got, want), (n, k)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_coarse_probe_equals_float64_and_every_simd_level(metric):
    """The native coarse probe (its own distances: 4 queries a centroid load, masked tails) picks the lists a
    float64 computation picks, nearest first, on continuous data (no near ties), for block and tail sizes that
    are not multiples of 4 / 16 / 32; every SIMD level gives the same probes; integer data with exact ties breaks
    them by the smaller list number, as the reference."""
    g = torch.Generator().manual_seed(3)
    for Q, d, nlist, nprobe in [(1, 3, 1, 1), (5, 17, 33, 4), (9, 128, 200, 2), (13, 64, 47, 47), (4, 8, 16, 16),
                                (0, 8, 5, 2), (2, 40, 70, 70), (3, 16, 33, 9), (6, 24, 20, 20), (7, 9, 100, 3),
                                (8, 32, 64, 64), (17, 20, 31, 31)]:
        q, c = torch.randn(Q, d, generator=g), torch.randn(nlist, d, generator=g)
        q64, c64 = q.double(), c.double()
        dist = ((q64[:, None] - c64[None]) ** 2).sum(-1) if metric == "l2" else -(q64 @ c64.T)
        truth = torch.sort(dist, dim=1, stable=True).indices[:, :nprobe]
        runs = []
        for level in LEVELS:
            with simd(level), sqret.use_backend("cpu_native"):
                runs.append(ops.coarse_probe(q, c, nprobe, metric))
        assert all(torch.equal(r, truth) for r in runs), (Q, d, nlist, nprobe)
        for level in LEVELS:  # a query's lists do not depend on its batch (blocks of 8, 4, 2, 1 queries)
            with simd(level), sqret.use_backend("cpu_native"):
                alone = [ops.coarse_probe(q[i : i + 1], c, nprobe, metric) for i in range(Q)]
            assert all(torch.equal(a[0], runs[0][i]) for i, a in enumerate(alone)), (level, Q)
        qi = torch.randint(-2, 3, (Q, d), generator=g).float()
        ci = torch.randint(-2, 3, (nlist, d), generator=g).float()
        got, want = both(lambda: ops.coarse_probe(qi, ci, nprobe, metric))  # noqa: B023
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="centroids_t"):
        ops.coarse_probe(q, c, 1, metric, centroids_t=c.contiguous())


@pytest.mark.parametrize("layout", ["codes", "fastscan"])
@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("k", [1, 10, 33, 160, 700])
def test_ivf_search_unsorted_holds_the_sorted_results(layout, exact, k):
    """sorted=False (a re-rank's candidates): per query the same (value, id) pairs as sorted=True, in any
    order; the -1 / inf padding past the probed codes included. Continuous data: few ties."""
    g = torch.Generator().manual_seed(k)
    M, K, d, nlist, Q, nprobe = 8, 16, 32, 9, 7, 4
    q, cen = torch.randn(Q, d, generator=g), torch.randn(nlist, d, generator=g)
    cb = torch.randn(M, K, d // M, generator=g)
    sizes = torch.randint(0, 300, (nlist,), generator=g).tolist()
    codes = [torch.randint(0, K, (n, M), generator=g, dtype=torch.uint8) for n in sizes]
    ids = [torch.randperm(10**5, generator=g)[:n] for n in sizes]
    stored = [ops.fastscan_pack(c).blocks for c in codes] if layout == "fastscan" else codes
    lists = ops.InvertedLists(stored, ids, M, K, layout=layout)
    probes = torch.stack([torch.randperm(nlist, generator=g)[:nprobe] for _ in range(Q)])
    for n_threads in (1, 2):
        with threads(n_threads), sqret.use_backend("cpu_native"):
            want = ops.ivf_search(q, cen, cb, lists, None, probes, k, exact=exact)
            got = ops.ivf_search(q, cen, cb, lists, None, probes, k, exact=exact, sorted=False)
        for r in range(Q):
            order = sorted(range(k), key=lambda j: (got[0][r, j].item(), got[1][r, j].item()))  # noqa: B023
            assert torch.equal(got[0][r, order], want[0][r]) and torch.equal(got[1][r, order], want[1][r])
    if k >= 160:  # unsorted somewhere: the order really is left alone
        assert any(not torch.equal(got[1][r], want[1][r]) for r in range(Q))
    with pytest.raises(TypeError, match="sorted"):
        ops.ivf_search(q, cen, cb, lists, None, probes, k, sorted=1)


@pytest.mark.parametrize("layout", ["codes", "fastscan"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_search_probing_itself_equals_probe_then_search(layout, metric):
    """probes as a number: the nprobe nearest lists found in the same native call give what coarse_probe then
    ivf_search give (native and reference, with and without the caches), and bad caches are clear errors."""
    g = torch.Generator().manual_seed(5)
    M, K, d, nlist, Q = 4, 16, 16, 7, 9
    q, cen, cb = torch.randn(Q, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    codes = [torch.randint(0, K, (int(n), M), generator=g, dtype=torch.uint8)
             for n in torch.randint(0, 90, (nlist,), generator=g)]
    stored = [ops.fastscan_pack(c).blocks for c in codes] if layout == "fastscan" else codes
    lists = ops.InvertedLists(stored, [torch.arange(len(c)) + 100 * li for li, c in enumerate(codes)], M, K,
                              layout=layout)
    caches = dict(centroid_norms=(cen * cen).sum(1), centroids_t=cen.T.contiguous())
    for backend in ("cpu_native", "reference"):
        for nprobe in (1, 3, nlist):
            for n_threads in (1, 2):
                with threads(n_threads), sqret.use_backend(backend):
                    probes = ops.coarse_probe(q, cen, nprobe, metric)
                    want = ops.ivf_search(q, cen, cb, lists, None, probes, 5, metric)
                    for kw in ({}, caches):
                        got = ops.ivf_search(q, cen, cb, lists, None, nprobe, 5, metric, **kw)
                        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for bad, match in ((dict(centroid_norms=torch.ones(nlist - 1)), "centroid_norms must be"),
                       (dict(centroids_t=cen.T), "centroids_t must be"),
                       (dict(centroids_t=cen.T.contiguous().double()), "centroids_t must be")):
        with pytest.raises(ValueError, match=match):
            ops.ivf_search(q, cen, cb, lists, None, 2, 5, metric, **bad)
    with pytest.raises(ValueError, match="go with probes given as a number"):
        ops.ivf_search(q, cen, cb, lists, None, ops.coarse_probe(q, cen, 2), 5, metric, **caches)
    with pytest.raises(ValueError, match="more than the 7 lists"):
        ops.ivf_search(q, cen, cb, lists, None, nlist + 1, 5, metric)
    with pytest.raises(ValueError, match="centroid_norms must be"):
        ops.coarse_probe(q, cen, 2, metric, centroid_norms=torch.ones(3))
    empty = ops.ivf_search(q[:0], cen, cb, lists, None, 2, 5, metric)
    assert empty[0].shape == (0, 5) and empty[1].shape == (0, 5)


@pytest.mark.parametrize("layout", ["codes", "fastscan"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_searcher_equals_ivf_search(layout, metric):
    """ops.IVFSearcher (its arguments checked once) returns what ops.ivf_search returns for the same arguments,
    natively and in the reference: batches of 0 to 19 queries (every probe block size), precomputed tables or
    none, by_residual or not, exact and approximate, sorted or not, with a refinement, 1 and 2 threads; the
    checks it keeps per search and those it makes once are clear errors."""
    g = torch.Generator().manual_seed(21)
    M, K, d, nlist = 4, 16, 16, 6
    q, cen, cb = torch.randn(19, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    codes = [torch.randint(0, K, (int(n), M), generator=g, dtype=torch.uint8)
             for n in torch.randint(0, 80, (nlist,), generator=g)]
    stored = [ops.fastscan_pack(c).blocks for c in codes] if layout == "fastscan" else codes
    n = sum(len(c) for c in codes)
    lists = ops.InvertedLists(stored, list(torch.randperm(n, generator=g).split([len(c) for c in codes])), M, K,
                              layout=layout)
    x = torch.randn(n, d, generator=g)
    table = ops.ivf_precomputed_table(cen, cb) if metric == "l2" else None
    for pre, by_residual in ((None, True), (table, True), (None, False)):
        searcher = ops.IVFSearcher(cen, cb, lists, metric, precomputed=pre, by_residual=by_residual)
        for backend in ("cpu_native", "reference"):
            for Q in (0, 1, 2, 3, 5, 8, 9, 19):
                for kw in (dict(exact=True), dict(exact=False, sorted=False), dict(refine=ops.Refinement(x, 12))):
                    for n_threads in (1, 2):
                        with threads(n_threads), sqret.use_backend(backend):
                            got = searcher.search(q[:Q], 5, 3, **kw)
                            want = ops.ivf_search(q[:Q], cen, cb, lists, None, 3, 5, metric, precomputed=pre,
                                                  by_residual=by_residual, **kw)
                        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (Q, kw, backend)
    with pytest.raises(ValueError, match="more than the 6 lists"):
        searcher.search(q, 5, nlist + 1)
    with pytest.raises(ValueError, match="k must be"):
        searcher.search(q, 0, 2)
    with pytest.raises(ValueError, match="features"):
        searcher.search(q[:, :8], 5, 2)
    with pytest.raises(TypeError, match="exact and sorted"):
        searcher.search(q, 5, 2, exact=1)
    with pytest.raises(ValueError, match="at least k"):
        searcher.search(q, 5, 2, refine=ops.Refinement(x, 3))
    with pytest.raises(ValueError, match="6 lists of codes"):
        ops.IVFSearcher(cen[:5], cb, lists, metric)
    with pytest.raises(TypeError, match="ops.InvertedLists"):
        ops.IVFSearcher(cen, cb, stored, metric)
    with pytest.raises(ValueError, match="by_residual=False"):
        ops.IVFSearcher(cen, cb, lists, "l2", precomputed=ops.ivf_precomputed_table(cen, cb), by_residual=False)
    with pytest.raises(ValueError, match="centroids_t must be"):
        ops.IVFSearcher(cen, cb, lists, metric, centroids_t=cen.T)


@pytest.mark.parametrize("layout", ["codes", "fastscan"])
def test_ivf_kernels_check_probes_themselves(layout):
    """The native IVF scans read no list outside [-1, nlist): the kernel raises on its own (the ops layer
    leaves the check to it), whether or not the bad probe comes first, at one and two threads."""
    from sqret.ops import cpu_native

    g = torch.Generator().manual_seed(3)
    M, K, d, nlist = 4, 16, 16, 5
    q, cen, cb = torch.randn(3, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    codes = [torch.randint(0, K, (20, M), generator=g, dtype=torch.uint8) for _ in range(nlist)]
    stored = [ops.fastscan_pack(c).blocks for c in codes] if layout == "fastscan" else codes
    lists = ops.InvertedLists(stored, [torch.arange(20) + 20 * li for li in range(nlist)], M, K, layout=layout)
    assert cpu_native.ivf_search.checks_probes
    for bad in (nlist, -2, 1 << 40, -(1 << 62)):
        for where in ((0, 0), (2, 1)):
            probes = torch.tensor([[0, 1], [2, -1], [4, 3]])
            probes[where] = bad
            for n_threads in (1, 2):
                with threads(n_threads), sqret.use_backend("cpu_native"):
                    with pytest.raises(ValueError, match=rf"probes must be .*\[-1, {nlist}\)"):
                        ops.ivf_search(q, cen, cb, lists, None, probes, 3)
                    with pytest.raises(ValueError, match="probes must be"):  # below the ops layer
                        cpu_native.ivf_search(q, cen, cb, lists, probes, 3, "l2")
    with sqret.use_backend("cpu_native"):
        v, i = ops.ivf_search(q, cen, cb, lists, None, torch.tensor([[0, 4], [-1, -1], [3, -1]]), 3)
    assert (i[1] == -1).all() and bool(((i[0] < 20) | (i[0] >= 80)).all())
    with sqret.use_backend("reference"), pytest.raises(ValueError, match="probes must be"):
        ops.ivf_search(q, cen, cb, lists, None, torch.tensor([[0, 5], [0, 0], [0, 0]]), 3)


@pytest.mark.parametrize("nbits", [4, 8])
@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
@pytest.mark.parametrize("Q,N,k", [(1, 3000, 10), (5, 777, 40), (3, 70, 100), (2, 0, 3), (0, 50, 5)])
def test_pq_search_equals_lut_then_scan(nbits, metric, Q, N, k):
    """One native call (tables built inside the scan) gives exactly build_lut + adc_topk; with integer data
    (exact in any summation order) it also equals the reference, ties by smaller id."""
    rng = np.random.default_rng(Q * 100 + N + nbits)
    M, K, dsub = 6, 1 << nbits, 3
    C = torch.from_numpy(rng.integers(-2, 3, (M, K, dsub)).astype(np.float32))
    q = torch.from_numpy(rng.integers(-3, 4, (Q, M * dsub)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8))
    stored = ops.fastscan_pack(codes) if nbits == 4 else codes
    ids = torch.from_numpy(rng.permutation(N).astype(np.int64))
    for n_threads in (1, 2):
        with threads(n_threads), sqret.use_backend("cpu_native"):
            got = ops.pq_search(q, C, stored, k, metric, ids=ids)
            lut = ops.build_lut(q, C, metric)
            assert_same(got, ops.adc_topk(lut, stored, k, largest=ops.largest_for(metric), ids=ids))
    if metric != "cos":  # cosine normalizes: not integer-exact
        with sqret.use_backend("reference"):
            assert_same(got, ops.pq_search(q, C, stored, k, metric, ids=ids))


def test_pq_search_bad_input():
    C = torch.randn(4, 16, 2)
    codes = torch.randint(0, 16, (100, 4), dtype=torch.uint8)
    q = torch.randn(3, 8)
    with sqret.use_backend("cpu_native"):
        bad = q.clone()
        bad[1, 2] = float("nan")
        for stored in (codes, ops.fastscan_pack(codes)):
            with pytest.raises(ValueError, match="NaN"):
                ops.pq_search(bad, C, stored, 5)
            with pytest.raises(ValueError, match="features"):
                ops.pq_search(torch.randn(3, 7), C, stored, 5)
            with pytest.raises(ValueError, match="k must be >= 1"):
                ops.pq_search(q, C, stored, 0)
        with pytest.raises(ValueError, match="codes must lie"):
            ops.pq_search(q, C, torch.full((5, 4), 16, dtype=torch.uint8), 1)
        with pytest.raises(ValueError, match="fast-scan codes need K = 16"):
            ops.pq_search(torch.randn(3, 8), torch.randn(4, 32, 2), ops.fastscan_pack(codes), 1)
        wrong = ops.FastScanCodes(ops.fastscan_pack(codes).blocks, 200)
        with pytest.raises(ValueError, match="fast-scan blocks for n = 200"):
            ops.pq_search(q, C, wrong, 1)


def test_fast_scan_group_cap_keeps_late_ties():
    """Each tile's re-rank is capped by the k-th smallest of the per-group minima of the quantized sums seen
    so far: codes in later tiles that tie with the best exactly (and lose only on id) or beat them must
    still be found, for k below, at and above the number of groups (64 per 64 <= k <= 256; none past)."""
    lut = torch.zeros(2, 4, 16)
    lut[:, :, 1:] = torch.arange(1, 16, dtype=torch.float32) * 10
    codes = torch.full((40000, 4), 3, dtype=torch.uint8)  # the first tiles: distance 120
    codes[35000:35020] = 0  # distance 0, late
    codes[300:310] = 1  # distance 40
    codes[37000:37300] = 1  # ties with them, later ids
    codes[39990:] = 2  # distance 80 in the last, partial block
    for level in LEVELS:
        with simd(level):
            for k in (1, 5, 10, 25, 40, 64, 65, 200, 256, 257, 400):
                assert_same(*both(lambda: ops.adc_topk(lut, ops.fastscan_pack(codes), k)))  # noqa: B023


def test_fast_scan_cap_allows_for_rounding():
    """A code whose quantized sum is above the k-th smallest (its entries rounded up, the other's down) can
    still be exactly closer: the cap on the quantized sums must leave room for the rounding."""
    lut = torch.full((1, 2, 16), 255.0)
    lut[0, 0, [0, 2, 3]] = torch.tensor([0.0, 1.4, 0.6])  # scale a = 1: 1.4 -> 1, 0.6 -> 1
    lut[0, 1, [0, 2]] = torch.tensor([0.0, 0.6])
    codes = torch.ones((1000, 2), dtype=torch.uint8)  # distance 510
    codes[10] = torch.tensor([3, 2])  # exact 1.2, quantized 2
    codes[500] = torch.tensor([2, 0])  # exact 1.4, quantized 1
    for level in LEVELS:
        with simd(level):
            for k in (1, 2):
                got, want = both(lambda: ops.adc_topk(lut, ops.fastscan_pack(codes), k))  # noqa: B023
                assert_same(got, want)
                assert got[1][0, 0] == 10


@pytest.mark.parametrize("metric", ["l2", "ip", "l2_sqrt"])
@pytest.mark.parametrize("M,K,d", [(16, 16, 8), (2, 16, 24), (5, 16, 6), (3, 16, 65), (3, 256, 5), (7, 33, 1),
                                   (2, 5, 40)])
def test_tables_of_one_query_equal_those_of_a_batch(metric, M, K, d):
    """One or two queries take a path without the transposed codebooks (K = 16: each sub-space transposed in
    registers when d is a multiple of 8, on the stack up to d = 64), and K = 16 has an AVX2 kernel: the same
    sums in the same order, so the tables (and a fused search from them) are bit-identical to those of a
    larger batch on every SIMD level."""
    g = torch.Generator().manual_seed(M * K + d)
    C, q = torch.randn(M, K, d, generator=g), torch.randn(5, M * d, generator=g)
    with sqret.use_backend("cpu_native"):
        batch = ops.build_lut(q, C, metric)
        for level in LEVELS:  # K = 16 has its own AVX2 kernel
            with simd(level):
                for Q in (1, 2, 5):
                    assert torch.equal(ops.build_lut(q[:Q], C, metric), batch[:Q])
        if K == 16 and metric != "l2_sqrt":
            codes = torch.randint(0, 16, (3000, M), generator=g, dtype=torch.uint8)
            for stored in (codes, ops.fastscan_pack(codes)):
                assert_same(ops.pq_search(q[:1], C, stored, 10, metric),
                            ops.adc_topk(batch[:1], stored, 10, largest=ops.largest_for(metric)))


@pytest.mark.parametrize("K", [5, 40, 256])
def test_encode_of_a_row_does_not_depend_on_its_batch(K):
    """Rows are encoded four at a time with the same sums in the same order as one at a time: any row
    gives the same code alone, in a batch, and at any position of a batch (the tail of a batch included)."""
    g = torch.Generator().manual_seed(K)
    x, C = torch.randn(23, 5 * 3, generator=g), torch.randn(5, K, 3, generator=g)
    x[7] = x[2]  # the same row at two positions of a group of four
    with sqret.use_backend("cpu_native"):
        batch = ops.encode(x, C)
        assert torch.equal(batch[7], batch[2])
        for i in range(x.shape[0]):
            assert torch.equal(ops.encode(x[i : i + 1], C), batch[i : i + 1])
        assert torch.equal(ops.encode(x[3:], C), batch[3:])


def test_pq_search_of_every_input_form_equals_the_reference():
    """ops.pq_search validates its arguments once, in Python, and hands cpu_native plain buffers (the native
    entry checks nothing): for arguments of every form it accepts (non-contiguous, float16 / float64 /
    Parameter codebooks, ids or none, k past N, 4-bit blocks or bytes, every metric) the native path gives
    the reference's results (integer data: exact in any order, ties by smaller id)."""
    from sqret.ops import cpu_native

    rng = np.random.default_rng(5)
    M, d, N = 4, 3, 150
    t = torch.from_numpy
    q = t(rng.integers(-3, 4, (3, M * d)).astype(np.float32))
    C4, C8 = (t(rng.integers(-2, 3, (M, K, d)).astype(np.float32)) for K in (16, 256))
    codes4, codes8 = (t(rng.integers(0, K, (N, M)).astype(np.uint8)) for K in (16, 256))
    fs = ops.fastscan_pack(codes4)
    labels = t(rng.permutation(N).astype(np.int64) * 7 + 3)
    strided = torch.stack([labels, labels], 1)[:, 0]  # non-contiguous ids
    forms = [
        (q, C4, fs), (q, C8, codes8), (q, C4, codes4), (q, C8, codes8.to(torch.int16)),
        (q.t().contiguous().t(), C4, fs), (q, C4.transpose(1, 2).contiguous().transpose(1, 2), fs),
        (q, C8, torch.cat([codes8, codes8], 1)[:, ::2]), (q.double(), C4, fs), (q, C4.half(), fs),
        (q, torch.nn.Parameter(C4), fs), (q[:1], C4, fs), (q[:0], C8, codes8), (q, C4, ops.fastscan_pack(codes4[:0])),
    ]
    for Q_, C, stored in forms:
        for metric in ("l2", "ip", "l2_sqrt", "cos"):
            for k, ids in ((5, None), (1, labels), (400, strided), (N, labels.numpy())):
                args = dict(ids=ids if len(stored) else None, check_finite=True)
                with sqret.use_backend("cpu_native"):
                    got = ops.pq_search(Q_, C, stored, k, metric, **args)
                with sqret.use_backend("reference"):
                    want = ops.pq_search(Q_, C, stored, k, metric, **args)
                want = (want[0].detach(), want[1])
                if metric in ("cos", "l2_sqrt"):  # normalized, square roots: equal up to rounding
                    torch.testing.assert_close(got[0], want[0].float())
                    continue
                assert_same(got, (want[0].float(), want[1]))
    assert cpu_native._pq_search_accepts(q.double(), C4, fs.blocks, fs.n, 5, "l2") is not None  # float64: reference


def test_pq_search_finite_check_names_what_is_not_finite():
    """check_finite is done inside the native call (beside the tables, where it costs nothing) with the
    messages of checks.finite; without it NaN is still an error (NaN tables), and the native kernels search
    inf as is (the reference's tables of an inf query are NaN)."""
    g = torch.Generator().manual_seed(5)
    M, d = 4, 3
    q, C4 = torch.randn(3, M * d, generator=g), torch.randn(M, 16, d, generator=g)
    codes8, C8 = torch.randint(0, 256, (150, M), generator=g, dtype=torch.uint8), torch.randn(M, 256, d, generator=g)
    fs = ops.fastscan_pack(torch.randint(0, 16, (150, M), generator=g, dtype=torch.uint8))
    inf, C_inf = q.clone(), C4.clone()
    inf[2, 5], C_inf[3, 15, 2] = float("inf"), -float("inf")
    nan = q.clone()
    nan[0, 0] = float("nan")
    for backend in ("cpu_native", "reference"):
        with sqret.use_backend(backend):
            for bad_q, bad_C, name in ((inf, C4, "queries"), (q, C_inf, "codebooks"), (nan, C4, "queries")):
                with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
                    ops.pq_search(bad_q, bad_C, fs, 5, check_finite=True)
            with pytest.raises(ValueError, match="codebooks contains NaN or inf"):  # no query: still checked
                ops.pq_search(q[:0], C_inf, fs, 5, check_finite=True)
            with pytest.raises(ValueError, match="NaN"):
                ops.pq_search(nan, C4, fs, 5)
            C8_inf = C8.clone()
            C8_inf[0, 0, 0] = float("inf")
            with pytest.raises(ValueError, match="codebooks contains NaN or inf"):
                ops.pq_search(q, C8_inf, codes8, 5, check_finite=True)
    with sqret.use_backend("cpu_native"):
        v, _ = ops.pq_search(inf, C4, fs, 5)  # inf is only checked on demand
    assert torch.isinf(v[2]).all() and torch.isfinite(v[:2]).all()


@pytest.mark.parametrize("K", [5, 16, 17, 40, 256])
def test_encode_takes_the_first_of_tied_codewords_on_every_simd_level(K):
    """The nearest codeword is found in one pass per SIMD lane (a running minimum and its index) and then
    across lanes: on exact ties the smallest index wins, wherever the tied codewords fall (a lane, the tail),
    NaN never wins, and when nothing is below +inf the first +inf does (0 when all are NaN)."""
    g = torch.Generator().manual_seed(K)
    M, d = 4, 3
    C = torch.randn(M, K, d, generator=g)
    pairs = [(0, K - 1), (1, K // 2), (K // 3, K - 2), (2, 3)]  # (first, second) copies of one codeword
    x = torch.empty(len(pairs), M * d)
    for r, (a, b) in enumerate(pairs):
        for m in range(M):
            C[m, b] = C[m, a]
            x[r, m * d:(m + 1) * d] = C[m, a]
    C[2, :] = 1e30  # sub-space 2: every distance +inf (||c||^2 overflows): the first +inf, 0
    C[3, :] = 1e30
    C[3, 0] = float("nan")  # sub-space 3: NaN first, then +inf: 1
    first_equal = [int((C[0] == x[r, :d]).all(-1).nonzero()[0]) for r in range(len(pairs))]  # overlapping pairs
    assert first_equal[0] == 0 and (K < 16 or first_equal == [a for a, _ in pairs])
    want = torch.tensor([[a, a, 0, 1] for a in first_equal], dtype=torch.uint8)
    with sqret.use_backend("cpu_native"):
        for level in LEVELS:
            with simd(level):
                for metric in ("l2", "ip"):
                    got = ops.encode(x, C, metric)
                    if metric == "l2":
                        assert torch.equal(got, want.to(got.dtype)), (level, got, want)
                    else:  # inner products: every level the same codes
                        with simd("scalar"):
                            assert torch.equal(got, ops.encode(x, C, metric))


@pytest.mark.parametrize("layout", ["codes", "fastscan"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("storage", ["flat", "fp16", "sq8"])
def test_ivf_search_with_refine_in_one_pass_equals_search_then_refine(layout, metric, storage):
    """refine=ops.Refinement: the native pass (probe, scan of the candidates, their re-rank per query) gives what
    the two native stages give one after the other (ivf_search of the candidates, then refine_topk), exactly:
    ids, distances, removed rows (label -1) skipped, rows renumbered by labels; exact and approximate fast
    scans, residual tables or not, 1 and 2 threads, candidates from k to past every stored code. The reference's
    composition: the same distances within float32 rounding (its sums run in another order)."""
    g = torch.Generator().manual_seed(11)
    M, K, d, nlist, Q = 4, 16, 16, 7, 9
    q, cen, cb = torch.randn(Q, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    sizes = [int(n) for n in torch.randint(0, 90, (nlist,), generator=g)]
    n = sum(sizes)
    codes = [torch.randint(0, K, (s, M), generator=g, dtype=torch.uint8) for s in sizes]
    stored = [ops.fastscan_pack(c).blocks for c in codes] if layout == "fastscan" else codes
    rows = torch.randperm(n, generator=g)  # list ids: rows of the stored vectors, in any order
    ids, at = [], 0
    for s in sizes:
        ids.append(rows[at : at + s].clone())
        at += s
    lists = ops.InvertedLists(stored, ids, M, K, layout=layout)
    x = torch.randn(n, d, generator=g)
    labels = torch.arange(n) * 3 + 1
    labels[torch.randperm(n, generator=g)[: n // 10]] = -1  # removed rows
    sq8 = ops.sq8_train(x) if storage == "sq8" else None
    vectors = ops.sq8_encode(x, *sq8) if sq8 else x.half() if storage == "fp16" else x
    caches = dict(centroid_norms=(cen * cen).sum(1), centroids_t=cen.T.contiguous())
    for kc in (5, 23, n + 5):
        refine = ops.Refinement(vectors, kc, labels, sq8)
        for exact in (True, False):
            for by_residual in (True, False):
                kw = dict(exact=exact, by_residual=by_residual)
                with sqret.use_backend("reference"):
                    want = ops.ivf_search(q, cen, cb, lists, None, 3, 5, metric, refine=refine, **kw)
                for n_threads in (1, 2):
                    with threads(n_threads), sqret.use_backend("cpu_native"):
                        got = ops.ivf_search(q, cen, cb, lists, None, 3, 5, metric, refine=refine, **caches, **kw)
                        probes = ops.coarse_probe(q, cen, 3, metric)
                        composed = ops.ivf_search(q, cen, cb, lists, None, probes, 5, metric, refine=refine, **kw)
                    assert torch.equal(got[1], composed[1]) and torch.equal(got[0], composed[0])
                    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
                    assert not (got[1] % 3 != 1).logical_and(got[1] != -1).any()  # labels, never rows
                    assert ((got[1] == -1) == torch.isinf(got[0])).all()


def _score64(x: torch.Tensor, v: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared l2 distances (or inner products) of rows x [n, d] to v [d], in float64."""
    return ((x - v) ** 2).sum(1) if metric == "l2" else x @ v


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("storage", ["flat", "fp16", "sq8"])
def test_refine_topk_abandoning_rows_keeps_the_exact_k_best(level, storage):
    """The l2 re-rank stops summing a row once its partial distance passes the k-th kept one (every 32
    dimensions). On rows whose leading dimensions dominate (PCA-like: most rows are abandoned at the first
    look), with repeated (re-ranked as often), missing (-1) and removed candidates, heap and reservoir k, the k
    best are those of a float64 re-rank of the same decoded rows, with their whole distances; inner products
    (never abandoned) too."""
    rng = np.random.default_rng(5)
    for d in (32, 33, 64, 100, 128):
        n, Q, kc = 3000, 7, 600
        spread = np.geomspace(8.0, 0.05, d).astype(np.float32)
        x = torch.from_numpy((rng.standard_normal((n, d)) * spread).astype(np.float32))
        q = torch.from_numpy((rng.standard_normal((Q, d)) * spread).astype(np.float32))
        sq8 = ops.sq8_train(x) if storage == "sq8" else None
        vectors = ops.sq8_encode(x, *sq8) if sq8 else x.half() if storage == "fp16" else x
        decoded = (ops.sq8_decode(vectors, *sq8) if sq8 else vectors.float()).double()
        labels = torch.arange(n) + 10
        labels[rng.permutation(n)[:300]] = -1
        cand = torch.from_numpy(rng.integers(-1, n, (Q, kc)))
        for k in (1, 10, 40, 200):
            for metric in ("l2", "ip"):
                with simd(level), sqret.use_backend("cpu_native"):
                    got_d, got_i = ops.refine_topk(q, vectors, cand, k, metric, labels=labels, sq8=sq8)
                for qi in range(Q):
                    v = q[qi].double()
                    rows = cand[qi][cand[qi] >= 0]  # a repeated candidate is re-ranked as often
                    rows = rows[labels[rows] >= 0]
                    want = torch.sort(_score64(decoded[rows], v, metric), descending=metric == "ip").values[:k]
                    assert (got_i[qi] >= 10).all(), (d, k, metric)
                    back = _score64(decoded[got_i[qi] - 10], v, metric)
                    np.testing.assert_allclose(back.numpy(), want.numpy(), rtol=2e-5, atol=1e-4)
                    np.testing.assert_allclose(got_d[qi].double().numpy(), want.numpy(), rtol=2e-5, atol=1e-4)


def test_ivf_refine_bad_inputs_are_clear_errors():
    """The refinement's checks (candidates below k, vectors of another width, SQ8 codes without their scales),
    and list ids that are no rows of the stored vectors: the native pass raises before reading such a row."""
    g = torch.Generator().manual_seed(2)
    M, K, d, nlist = 4, 16, 16, 3
    q, cen, cb = torch.randn(4, d, generator=g), torch.randn(nlist, d, generator=g), torch.randn(M, K, d // M)
    codes = [torch.randint(0, K, (30, M), generator=g, dtype=torch.uint8) for _ in range(nlist)]
    lists = ops.InvertedLists(codes, [torch.arange(30) + 30 * i for i in range(nlist)], M, K)
    x = torch.randn(90, d, generator=g)
    with pytest.raises(ValueError, match="at least k"):
        ops.ivf_search(q, cen, cb, lists, None, 2, 10, refine=ops.Refinement(x, 5))
    with pytest.raises(ValueError, match="stored vectors d"):
        ops.ivf_search(q, cen, cb, lists, None, 2, 5, refine=ops.Refinement(x[:, :8], 10))
    with pytest.raises(ValueError, match="SQ8 codes"):
        ops.ivf_search(q, cen, cb, lists, None, 2, 5, refine=ops.Refinement(x.to(torch.uint8), 10))
    with pytest.raises(TypeError, match="ops.Refinement"):
        ops.ivf_search(q, cen, cb, lists, None, 2, 5, refine=(x, 10))
    for n_threads in (1, 2):
        with threads(n_threads), sqret.use_backend("cpu_native"):
            with pytest.raises(ValueError, match="refinement's rows"):
                ops.ivf_search(q, cen, cb, lists, None, nlist, 5, refine=ops.Refinement(x[:60], 40))
            with pytest.raises(ValueError, match="candidates must be rows"):
                ops.refine_topk(q, x[:60], torch.full((4, 3), 70), 2)
