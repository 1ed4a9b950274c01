"""Fuzz suite over the ops' argument space (run by tests/test_fuzz.py in a child process, where a crash is
possible: a signal fails that test).

Each case draws a valid problem, then applies one *benign* change (another dtype, layout, stride, container,
k > N, empty inputs), which must give the brute-force float64 answer, or one *harmful* change (a wrong shape,
dtype, code out of range, NaN, bad k, mismatched ids, ...), which must raise one of ``ALLOWED``. Backends:
whatever ``auto`` picks for CPU tensors (cpu_native where built, else the reference), and the reference.
"""

from __future__ import annotations

import os

import brute
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqret
from sqret import ops

ALLOWED = (ValueError, TypeError)
SETTINGS = settings(
    max_examples=int(os.environ.get("SQRET_FUZZ_EXAMPLES", "12")),  # per change: every change is its own run
    deadline=None,
    derandomize=os.environ.get("SQRET_FUZZ_RANDOM", "") == "",
    database=None,
    suppress_health_check=list(HealthCheck),
)
BACKENDS = ["auto", "reference"]


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request):
    with sqret.use_backend(request.param):
        yield request.param


def expect_error(call) -> None:
    try:
        call()
    except ALLOWED:
        return
    raise AssertionError("a harmful argument was accepted")


def check_topk(vals, ids, dist, k, largest, labels=None) -> None:
    """vals / ids [Q, k] against brute-force distances dist [Q, N] (float64): the k best values (ties in any
    order), each id at its own distance, no duplicates, -1 / inf padding."""
    vals, ids = np.asarray(vals, np.float64), np.asarray(ids)
    Q, N = dist.shape
    assert vals.shape == (Q, k) and ids.shape == (Q, k), (vals.shape, ids.shape, Q, k)
    kk = min(k, N)
    assert (ids[:, kk:] == -1).all() and np.isinf(vals[:, kk:]).all()
    if not kk or not Q:
        return
    want = np.sort(-dist if largest else dist, axis=1)[:, :kk] * (-1 if largest else 1)
    scale = 1e-4 * (1 + np.abs(dist[np.isfinite(dist)]).max(initial=0))
    np.testing.assert_allclose(vals[:, :kk], want, rtol=1e-4, atol=scale)
    pos = ids[:, :kk]
    if labels is not None:
        inverse = {int(v): j for j, v in enumerate(labels)}
        pos = np.vectorize(lambda v: inverse.get(int(v), -1))(pos)
    assert (pos >= 0).all() and (pos < N).all(), pos
    for q in range(Q):
        assert len(set(pos[q].tolist())) == kk, "duplicate ids"
        np.testing.assert_allclose(dist[q, pos[q]], vals[q, :kk], rtol=1e-4, atol=scale)


def f64(t) -> np.ndarray:
    return (t.detach().to(torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64))


def layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if how == "transposed" and t.dim() == 2:
        return t.T.contiguous().T
    if how == "strided" and t.dim() >= 1:
        big = torch.zeros((t.shape[0] * 2, *t.shape[1:]), dtype=t.dtype)
        big[::2] = t
        return big[::2]
    return t


# ---------------------------------------------------------------------------------------------- adc_topk


@st.composite
def adc_problems(draw):
    Q, M, N = draw(st.integers(0, 5)), draw(st.integers(1, 9)), draw(st.integers(0, 200))
    K = draw(st.sampled_from([1, 2, 5, 16, 16, 31, 256, 300]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((Q, M, K)).astype(np.float32)
    if draw(st.booleans()):  # small integers: ties
        table = rng.integers(0, 3, (Q, M, K)).astype(np.float32)
    codes = rng.integers(0, K, (N, M))
    k = draw(st.integers(1, N + 5))
    return table, codes, K, k, draw(st.booleans()), rng


BENIGN_ADC = ["none", "int16", "int32", "int64", "transposed", "strided", "numpy", "chunks", "fastscan", "packed",
              "lut64", "lut16", "lut_strided", "ids", "ids_numpy", "big_k", "check_finite", "inf_lut"]
HARMFUL_ADC = ["code_high", "code_negative", "float_codes", "wrong_M", "codes_1d", "lut_2d", "lut_int", "k0", "k_neg",
               "k_float", "k_str", "k_bool", "nan_lut", "inf_checked", "ids_short", "ids_int32", "ids_2d",
               "packed_not16", "packed_width", "chunk_wrong_M", "fastscan_wrong"]


@pytest.mark.parametrize("change", BENIGN_ADC + HARMFUL_ADC)
@SETTINGS
@given(problem=adc_problems())
def test_adc_topk(problem, change):
    table, codes, K, k, largest, rng = problem
    Q, M, _ = table.shape
    N = codes.shape[0]
    lut = torch.from_numpy(table)
    c = torch.from_numpy(codes).to(ops.code_dtype(K))
    kw: dict = {"largest": largest}
    arg = c
    labels = None
    if change in ("int16", "int32", "int64"):
        arg = c.to(getattr(torch, change))
    elif change in ("transposed", "strided"):
        arg = layout(c, change)
    elif change == "numpy":
        arg = c.numpy()
    elif change == "chunks":
        arg = [c[a : a + 37].numpy() for a in range(0, N, 37)]
    elif change in ("fastscan", "packed") and K == 16:
        arg = ops.fastscan_pack(c) if change == "fastscan" else layout(ops.pack4(c), "transposed")
        kw["packed"] = change == "packed"
    elif change == "lut64":
        lut = lut.double()
    elif change == "lut16":
        lut = lut.half()
    elif change == "lut_strided":
        lut = layout(lut, "strided")
    elif change in ("ids", "ids_numpy"):
        labels = rng.permutation(10 * N + 10)[:N].astype(np.int64)
        kw["ids"] = labels if change == "ids_numpy" else torch.from_numpy(labels)
    elif change == "big_k":
        k = N + 50
    elif change == "check_finite":
        kw["check_finite"] = True
    elif change == "inf_lut" and Q:
        lut = lut.clone()
        lut[0, 0, 0] = float("inf")
    # harmful
    harmful = change in HARMFUL_ADC
    if change == "code_high":
        arg = c.to(torch.int32)
        if N:
            arg[rng.integers(N), rng.integers(M)] = K
        else:
            harmful = False
    elif change == "code_negative":
        arg = c.to(torch.int32)
        if N:
            arg[0, 0] = -1
        else:
            harmful = False
    elif change == "float_codes":
        arg = c.float()
    elif change == "wrong_M":
        arg = torch.zeros((N, M + 1), dtype=torch.uint8)
    elif change == "codes_1d":
        arg = c.reshape(-1)
    elif change == "lut_2d":
        lut = lut.reshape(Q, M * K)
    elif change == "lut_int":
        lut = lut.to(torch.int32)
    elif change in ("k0", "k_neg", "k_float", "k_str", "k_bool"):
        k = {"k0": 0, "k_neg": -3, "k_float": 2.0, "k_str": "3", "k_bool": True}[change]
    elif change == "nan_lut":
        if Q and N:
            lut = lut.clone()
            lut[0, :, :] = float("nan")
        else:
            harmful = False
    elif change == "inf_checked":
        kw["check_finite"] = True
        if Q:
            lut = lut.clone()
            lut[-1, -1, -1] = float("-inf")
        else:
            harmful = False
    elif change == "ids_short":
        kw["ids"] = torch.arange(N + 1)
    elif change == "ids_int32":
        kw["ids"] = torch.arange(N, dtype=torch.int32)
    elif change == "ids_2d":
        kw["ids"] = torch.arange(N)[None]
    elif change == "packed_not16":
        if K != 16:
            arg, kw["packed"] = torch.zeros((N, (M + 1) // 2), dtype=torch.uint8), True
        else:
            harmful = False
    elif change == "packed_width":
        arg, kw["packed"] = torch.zeros((N, (M + 1) // 2 + 1), dtype=torch.uint8), True
    elif change == "chunk_wrong_M":
        arg = [c.numpy(), np.zeros((3, M + 2), np.uint8)]
    elif change == "fastscan_wrong":
        if K == 16:
            fs = ops.fastscan_pack(c)
            arg = ops.FastScanCodes(fs.blocks, fs.n + 64)
        else:
            harmful = False
    if harmful:
        expect_error(lambda: ops.adc_topk(lut, arg, k, **kw))
        return
    v, i = ops.adc_topk(lut, arg, k, **kw)
    table64 = f64(lut)
    dist = np.zeros((Q, N))
    for m in range(M):
        dist += table64[:, m, codes[:, m]]
    check_topk(v, i, dist, k, largest, labels)


# ---------------------------------------------------------------------------------------------- pq_search


@st.composite
def search_problems(draw):
    Q, M, dsub, N = draw(st.integers(0, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 9)), draw(st.integers(0, 150))
    K = draw(st.sampled_from([16, 16, 256, 256, 7, 300]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    q = rng.standard_normal((Q, M * dsub)).astype(np.float32)
    C = rng.standard_normal((M, K, dsub)).astype(np.float32)
    codes = rng.integers(0, K, (N, M))
    metric = draw(st.sampled_from(ops.LUT_METRICS))
    return q, C, codes, K, draw(st.integers(1, N + 4)), metric, rng


BENIGN_SEARCH = ["none", "q64", "q16", "qbf16", "q_transposed", "cb64", "cb_strided", "fastscan", "chunks", "ids",
                 "check_finite", "numpy_ids"]
HARMFUL_SEARCH = ["wrong_D", "nan_q", "inf_checked", "nan_cb", "metric", "k0", "code_high", "ids_short", "q_1d",
                  "q_int"]


@pytest.mark.parametrize("change", BENIGN_SEARCH + HARMFUL_SEARCH)
@SETTINGS
@given(problem=search_problems())
def test_pq_search(problem, change):
    q, C, codes, K, k, metric, rng = problem
    Q, D = q.shape
    M = C.shape[0]
    N = codes.shape[0]
    queries, cb = torch.from_numpy(q), torch.from_numpy(C)
    c = torch.from_numpy(codes).to(ops.code_dtype(K))
    arg, kw, labels, harmful = c, {}, None, change in HARMFUL_SEARCH
    if change == "q64":
        queries = queries.double()
    elif change == "q16":
        queries = queries.half()
    elif change == "qbf16":
        queries = queries.bfloat16()
    elif change == "q_transposed":
        queries = layout(queries, "transposed")
    elif change == "cb64":
        cb = cb.double()
    elif change == "cb_strided":
        cb = layout(cb, "strided")
    elif change == "fastscan" and K == 16:
        arg = ops.fastscan_pack(c)
    elif change == "chunks":
        arg = [c[a : a + 50] for a in range(0, N, 50)]
    elif change in ("ids", "numpy_ids"):
        labels = rng.permutation(5 * N + 5)[:N].astype(np.int64)
        kw["ids"] = torch.from_numpy(labels) if change == "ids" else labels
    elif change == "check_finite":
        kw["check_finite"] = True
    elif change == "wrong_D":
        queries = torch.zeros((Q, D + 1))
    elif change == "nan_q":
        if Q and N:
            queries = queries.clone()
            queries[0, 0] = float("nan")
        else:
            harmful = False
    elif change == "inf_checked":
        kw["check_finite"] = True
        if Q:
            queries = queries.clone()
            queries[-1, -1] = float("inf")
        else:
            harmful = False
    elif change == "nan_cb":
        if Q and N:
            cb = cb.clone()
            cb[:, :, :] = float("nan")
        else:
            harmful = False
    elif change == "metric":
        metric = "hamming"
    elif change == "k0":
        k = 0
    elif change == "code_high":
        if N and K < 256:
            arg = c.to(torch.int32)
            arg[-1, 0] = K
        else:
            harmful = False
    elif change == "ids_short":
        kw["ids"] = torch.arange(max(N - 1, 0)) if N else torch.arange(1)
    elif change == "q_1d":
        queries = queries.reshape(-1)
    elif change == "q_int":
        queries = queries.to(torch.int64)
    if harmful:
        expect_error(lambda: ops.pq_search(queries, cb, arg, k, metric, **kw))
        return
    v, i = ops.pq_search(queries, cb, arg, k, metric, **kw)
    table = brute.lut(f64(queries), f64(cb), metric)
    dist = np.zeros((Q, N))
    for m in range(M):
        dist += table[:, m, codes[:, m]]
    check_topk(v, i, dist, k, metric in ("ip", "cos"), labels)


# ---------------------------------------------------------------------------------------------- ivf_search


@st.composite
def ivf_problems(draw):
    Q, M, dsub, nlist = draw(st.integers(0, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(
        st.integers(1, 6))
    K = draw(st.sampled_from([16, 256, 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    d = M * dsub
    sizes = rng.integers(0, 40, nlist)
    sizes[rng.integers(nlist)] *= draw(st.sampled_from([0, 1]))
    codes = [rng.integers(0, K, (n, M)).astype(np.uint8) for n in sizes]
    ids = np.split(rng.permutation(1000)[: sizes.sum()].astype(np.int64), np.cumsum(sizes)[:-1])
    nprobe = draw(st.integers(1, nlist))
    probes = np.stack([rng.permutation(nlist)[:nprobe] for _ in range(Q)]) if Q else np.zeros((0, nprobe), np.int64)
    if Q and draw(st.booleans()):
        probes[0, -1] = -1
    return (rng.standard_normal((Q, d)).astype(np.float32), rng.standard_normal((nlist, d)).astype(np.float32) * 2,
            rng.standard_normal((M, K, dsub)).astype(np.float32), codes, ids, probes, draw(st.integers(1, 60)),
            draw(st.sampled_from(["l2", "ip"])), rng)


BENIGN_IVF = ["none", "numpy", "transposed", "probes32", "precomputed", "inverted_lists", "q64"]
HARMFUL_IVF = ["ids_len", "ids_int32", "ids_float", "codes_M", "codes_high", "precomputed_shape", "probes_high",
               "probes_low", "probes_rows", "centroids_d", "lists_missing", "k0", "metric", "codes_3d", "ids_given"]


@pytest.mark.parametrize("change", BENIGN_IVF + HARMFUL_IVF)
@SETTINGS
@given(problem=ivf_problems())
def test_ivf_search(problem, change):
    q, cen, C, codes, ids, probes, k, metric, rng = problem
    Q, d = q.shape
    nlist, M, K = cen.shape[0], C.shape[0], C.shape[1]
    queries, centroids, cb = torch.from_numpy(q), torch.from_numpy(cen), torch.from_numpy(C)
    lc = [torch.from_numpy(c) for c in codes]
    li = [torch.from_numpy(i) for i in ids]
    pr = torch.from_numpy(probes).long()
    kw, harmful = {}, change in HARMFUL_IVF
    big = max(range(nlist), key=lambda j: len(ids[j]))
    if change == "numpy":
        lc, li = codes, ids
    elif change == "transposed":
        lc = [layout(c, "transposed") for c in lc]
    elif change == "probes32":
        pr = pr.int()
    elif change == "precomputed":
        kw["precomputed"] = ops.ivf_precomputed_table(centroids, cb)
    elif change == "inverted_lists":
        lc, li = ops.InvertedLists(lc, li, M, K), None
    elif change == "q64":
        queries = queries.double()
    elif change == "ids_len":
        li[big] = torch.cat([li[big], torch.tensor([5000])])
    elif change == "ids_int32":
        li[0] = li[0].int()
    elif change == "ids_float":
        li[0] = li[0].double()
    elif change == "codes_M":
        lc[0] = torch.zeros((len(ids[0]), M + 1), dtype=torch.uint8)
    elif change == "codes_high":
        if K < 256 and len(ids[big]):
            lc[big] = lc[big].clone()
            lc[big][0, 0] = K
        else:
            harmful = False
    elif change == "precomputed_shape":
        kw["precomputed"] = torch.zeros((nlist, M, K + 1))
    elif change == "probes_high":
        pr = pr.clone()
        if Q:
            pr[0, 0] = nlist
        else:
            harmful = False
    elif change == "probes_low":
        if Q:
            pr = pr.clone()
            pr[0, 0] = -2
        else:
            harmful = False
    elif change == "probes_rows":
        pr = torch.zeros((Q + 1, 1), dtype=torch.long)
    elif change == "centroids_d":
        centroids = torch.zeros((nlist, d + 1))
    elif change == "lists_missing":
        lc, li = lc[:-1], li[:-1]
    elif change == "k0":
        k = 0
    elif change == "metric":
        metric = "cos"
    elif change == "codes_3d":
        lc[0] = lc[0][None]
    elif change == "ids_given":
        lc, li = ops.InvertedLists(lc, li, M, K), li
    if harmful:
        expect_error(lambda: ops.ivf_search(queries, centroids, cb, lc, li, pr, k, metric, **kw))
        return
    v, i = ops.ivf_search(queries, centroids, cb, lc, li, pr, k, metric, **kw)
    q64, c64, C64 = f64(queries), cen.astype(np.float64), C.astype(np.float64)
    all_ids = np.concatenate(ids)
    list_of = np.repeat(np.arange(nlist), [len(x) for x in ids])
    recon = np.concatenate([c.astype(np.int64) for c in codes]) if len(all_ids) else np.zeros((0, M), np.int64)
    r = C64[np.arange(M)[None, :], recon].reshape(len(all_ids), d) if len(all_ids) else np.zeros((0, d))
    for qi in range(Q):
        probed = set(probes[qi].tolist()) - {-1}
        keep = np.isin(list_of, sorted(probed))
        x = c64[list_of[keep]] + r[keep]
        dist = ((q64[qi] - x) ** 2).sum(1) if metric == "l2" else x @ q64[qi]
        check_topk(v[qi : qi + 1], i[qi : qi + 1], dist[None], k, metric == "ip", all_ids[keep])


# ---------------------------------------------------------------------------------------------- the soft ops


@st.composite
def soft_problems(draw):
    B, M, d, K = draw(st.integers(0, 9)), draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return (rng.standard_normal((B, M * d)).astype(np.float32), rng.standard_normal((M, K, d)).astype(np.float32),
            draw(st.floats(0.1, 4.0)), draw(st.sampled_from(ops.METRICS)), rng)


BENIGN_SOFT = ["none", "x64", "x16", "x_transposed", "cb64", "cb_strided"]
HARMFUL_SOFT = ["wrong_D", "cb_2d", "x_int", "tau0", "tau_nan", "tau_inf", "tau_str", "metric", "nan_checked",
                "x_3d", "cb_empty"]


@pytest.mark.parametrize("op", ["soft", "probs", "encode", "lut", "decode"])
@pytest.mark.parametrize("change", BENIGN_SOFT + HARMFUL_SOFT)
@SETTINGS
@given(problem=soft_problems())
def test_soft_ops_encode_decode_lut(problem, change, op):
    x, C, tau, metric, rng = problem
    B, D = x.shape
    M, K, d = C.shape
    xt, cb = torch.from_numpy(x), torch.from_numpy(C)
    harmful, kw = change in HARMFUL_SOFT, {}
    if change == "x64":
        xt = xt.double()
    elif change == "x16":
        xt = xt.half() if op not in ("soft", "probs") else xt
    elif change == "x_transposed":
        xt = layout(xt, "transposed")
    elif change == "cb64":
        cb = cb.double()
    elif change == "cb_strided":
        cb = layout(cb, "strided")
    elif change == "wrong_D":
        xt = torch.zeros((B, D + 1))
    elif change == "cb_2d":
        cb = cb.reshape(M, K * d)
    elif change == "x_int":
        xt = xt.to(torch.int32)
    elif change in ("tau0", "tau_nan", "tau_inf", "tau_str"):
        tau = {"tau0": 0.0, "tau_nan": float("nan"), "tau_inf": float("inf"), "tau_str": "1"}[change]
        harmful = op in ("soft", "probs")
    elif change == "metric":
        metric = "l1"
    elif change == "nan_checked":
        kw["check_finite"] = True
        if B:
            xt = xt.clone()
            xt[0, 0] = float("nan")
        else:
            harmful = False
        harmful = harmful and op != "decode"
    elif change == "x_3d":
        xt = xt[None]
    elif change == "cb_empty":
        cb = torch.zeros((M, 0, d))
    codes = torch.from_numpy(rng.integers(0, K, (B, M))).to(ops.code_dtype(K))
    calls = {
        "soft": lambda: ops.soft_quantize(xt, cb, tau, metric, **kw),
        "probs": lambda: ops.assign_probs(xt, cb, tau, metric, **kw),
        "encode": lambda: ops.encode(xt, cb, metric, **kw),
        "lut": lambda: ops.build_lut(xt, cb, metric, **kw),
        "decode": lambda: ops.decode(codes, cb),
    }
    if op == "decode" and change in ("wrong_D", "x_int", "x_3d", "metric", "nan_checked"):
        harmful = False
    if harmful:
        expect_error(calls[op])
        return
    out = calls[op]()
    xs, Cs = f64(xt), f64(cb)
    tol = 2e-2 if xt.dtype == torch.float16 else 1e-4
    if op == "soft":
        assert brute.rel_err(out, brute.soft_quantize(xs, Cs, tau, metric)) < tol
    elif op == "probs":
        assert brute.rel_err(out, brute.probs(xs, Cs, tau, metric)) < tol
    elif op == "lut":
        assert brute.rel_err(out, brute.lut(xs, Cs, metric)) < tol
    elif op == "decode":
        want = Cs[np.arange(M)[None, :], codes.long().numpy()].reshape(B, M * d)
        np.testing.assert_allclose(f64(out), want, rtol=1e-6)
    else:
        s = brute.scores(xs, Cs, metric)
        chosen = np.take_along_axis(s, out.long().numpy()[..., None], axis=-1)[..., 0]
        assert np.all(chosen >= s.max(-1, initial=-np.inf) - 1e-4 * (1 + np.abs(s).max(initial=0)))


# ---------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("change", ["ok", "high", "neg", "float", "1d", "width"])
@SETTINGS
@given(N=st.integers(0, 200), M=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_pack4_fastscan_round_trips(N, M, seed, change):
    rng = np.random.default_rng(seed)
    c = torch.from_numpy(rng.integers(0, 16, (N, M))).to(torch.uint8)
    if change == "ok":
        assert torch.equal(ops.unpack4(ops.pack4(c), M), c)
        assert torch.equal(ops.fastscan_unpack(ops.fastscan_pack(c)), c)
        return
    if change in ("high", "neg") and N == 0:
        return
    bad = {"high": lambda: c.to(torch.int32).index_fill(0, torch.tensor([0]), 16),
           "neg": lambda: -c.to(torch.int32) - 1,
           "float": lambda: c.float(), "1d": lambda: c.reshape(-1), "width": lambda: c}[change]()
    if change == "width":
        expect_error(lambda: ops.unpack4(torch.zeros((N, (M + 1) // 2 + 1), dtype=torch.uint8), M))
        return
    expect_error(lambda: ops.pack4(bad))
    expect_error(lambda: ops.fastscan_pack(bad))
