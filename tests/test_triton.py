"""The triton backend (sqret_kernels) on CPU tensors through Triton's interpreter, against the reference and
a NumPy float64 brute force: odd shapes, K < 256, empty inputs, ties, every top-k path, gradients, half
precision, opcheck. Outputs are poisoned (NaN / garbage) before each call so unwritten places show."""

import contextlib

import brute
import numpy as np
import pytest
import torch

import sqret
from sqret import ops

TRITON = {b.name: b for b in sqret.backends()}["triton"]
pytestmark = pytest.mark.skipif(not TRITON.available or "cpu" not in TRITON.devices,
                                reason=f"triton backend unavailable on CPU: {TRITON.reason}")

SHAPES = [  # (B, M, K, d)
    (37, 5, 13, 4),
    (1, 1, 1, 1),
    (64, 3, 40, 7),
    (19, 8, 16, 2),
    (0, 2, 9, 3),
]


@pytest.fixture(autouse=True)
def triton_backend():
    with sqret.use_backend("triton"):
        yield


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every torch.empty in the kernels' launchers returns NaN (floats) or -7 (ints)."""
    real = torch.empty

    def poisoned(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7 if t.dtype != torch.uint8 else 251)

    for mod in ("sqret_kernels.soft", "sqret_kernels.lut", "sqret_kernels.adc", "sqret_kernels.ivf"):
        monkeypatch.setattr(f"{mod}.torch.empty", poisoned)


def _np(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("B,M,K,d", SHAPES)
@pytest.mark.parametrize("metric", ops.METRICS)
def test_forward_ops_against_float64(B, M, K, d, metric):
    x, C = _np((B, M * d), B + K), _np((M, K, d), M * K)
    xt, Ct = torch.from_numpy(x).float(), torch.from_numpy(C).float()
    z = ops.soft_quantize(xt, Ct, 0.3, metric)
    assert brute.rel_err(z, brute.soft_quantize(x, C, 0.3, metric)) < 1e-5
    p = ops.assign_probs(xt, Ct, 0.3, metric)
    assert p.shape == (B, M, K) and brute.rel_err(p, brute.probs(x, C, 0.3, metric)) < 1e-5
    codes = ops.encode(xt, Ct, metric)
    s = brute.scores(x, C, metric)
    chosen = np.take_along_axis(s, codes.long().numpy()[..., None], axis=-1)[..., 0]
    tol = 1e-5 * (1 + np.abs(s).max(initial=0))
    assert codes.dtype == torch.uint8 and np.all(chosen >= s.max(-1, initial=-np.inf) - tol)
    for lm in ops.LUT_METRICS if metric == "l2" else (metric,):
        lut = ops.build_lut(xt, Ct, lm)
        assert lut.shape == (B, M, K) and brute.rel_err(lut, brute.lut(x, C, lm)) < 1e-5


@pytest.mark.parametrize("B,M,K,d", SHAPES[:4])
@pytest.mark.parametrize("metric", ops.METRICS)
def test_gradients_against_reference(B, M, K, d, metric):
    x = torch.from_numpy(_np((B, M * d), 3)).float()
    C = torch.from_numpy(_np((M, K, d), 4)).float()
    gz, gp = torch.from_numpy(_np((B, M * d), 5)).float(), torch.from_numpy(_np((B, M, K), 6)).float()

    def grads():
        xr, Cr = x.clone().requires_grad_(), C.clone().requires_grad_()
        a = torch.autograd.grad((ops.soft_quantize(xr, Cr, 0.4, metric) * gz).sum(), (xr, Cr))
        b = torch.autograd.grad((ops.assign_probs(xr, Cr, 0.4, metric) * gp).sum(), (xr, Cr))
        return a + b

    got = grads()
    with sqret.use_backend("reference"):
        x, C, gz, gp = x.double(), C.double(), gz.double(), gp.double()
        want = grads()
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and brute.rel_err(a, b) < 1e-4


@pytest.mark.parametrize("B,M,K,d,dtype", [(20, 2, 9, 130, torch.float32), (13, 2, 11, 100, torch.float32),
                                             (9, 1, 5, 200, torch.bfloat16), (6, 1, 3, 129, torch.float16)])
@pytest.mark.parametrize("metric", ops.METRICS)
def test_wide_sub_vectors_read_in_chunks(B, M, K, d, dtype, metric):
    """Sub-vectors wider than a kernel's widest tile (64 lanes in the float32 backward, 128 elsewhere) are read
    in chunks, with a partial last chunk, and each chunk of the output lanes has its own programs: forward,
    probabilities, codes and both gradients against float64."""
    from sqret_kernels import soft

    assert soft.lanes(d, dtype == torch.float32, backward=True)["SPLIT"]
    assert soft.lanes(d, dtype == torch.float32)["SPLIT"] == (d > 128)
    x, C = _np((B, M * d), d), 0.3 * _np((M, K, d), K)
    gz, gp = _np((B, M * d), 1), _np((B, M, K), 2)

    def run(x, C, gz, gp):
        xr, Cr = x.clone().requires_grad_(), C.clone().requires_grad_()
        z = ops.soft_quantize(xr, Cr, 0.4, metric)
        p = ops.assign_probs(xr, Cr, 0.4, metric)
        grads = torch.autograd.grad((z.double() * gz).sum() + (p.double() * gp).sum(), (xr, Cr))
        return (z.detach(), p.detach(), *grads), ops.encode(x, C, metric)

    t = {n: torch.from_numpy(a).to(dtype) for n, a in dict(x=x, C=C, gz=gz, gp=gp).items()}
    got, codes = run(*t.values())
    with sqret.use_backend("reference"):  # float64, from the inputs as rounded to dtype
        want, _ = run(*(a.double() for a in t.values()))
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # half outputs are rounded to dtype
    for a, b in zip(got, want, strict=True):
        assert brute.rel_err(a.double(), b) < tol
    s = brute.scores(t["x"].double().numpy(), t["C"].double().numpy(), metric)
    chosen = np.take_along_axis(s, codes.long().numpy()[..., None], axis=-1)[..., 0]
    assert np.all(chosen >= s.max(-1) - 1e-5 * (1 + np.abs(s).max()))


def test_non_contiguous_and_half_inputs():
    x = torch.randn(40, 30)[:, ::2]  # [40, 15] stride 2
    C = torch.randn(5, 11, 3).transpose(1, 2).contiguous().transpose(1, 2)
    with sqret.use_backend("reference"):
        ref = ops.soft_quantize(x, C, 0.5)
        ref_lut = ops.build_lut(x, C)
    assert brute.rel_err(ops.soft_quantize(x, C, 0.5), ref) < 1e-5
    assert brute.rel_err(ops.build_lut(x, C), ref_lut) < 1e-5
    for dt in (torch.float16, torch.bfloat16):
        xh, Ch = x.to(dt).requires_grad_(), C.to(dt).requires_grad_()
        z = ops.soft_quantize(xh, Ch, 0.5)
        assert z.dtype == dt and brute.rel_err(z.detach().float(), ref) < 2e-2
        gx, gC = torch.autograd.grad(z.float().sum(), (xh, Ch))
        assert gx.dtype == dt and gC.dtype == dt and torch.isfinite(gx.float()).all()
    lut16 = ops.build_lut(x, C, dtype=torch.float16)
    assert lut16.dtype == torch.float16 and brute.rel_err(lut16.float(), ref_lut) < 1e-3


def test_decode_plain_and_packed():
    C = torch.randn(5, 16, 3)
    codes = torch.randint(0, 16, (77, 5), dtype=torch.uint8)
    with sqret.use_backend("reference"):
        want = ops.decode(codes, C)
    assert torch.equal(ops.decode(codes, C), want)
    assert torch.equal(ops.decode(ops.pack4(codes), C, packed=True), want)


@contextlib.contextmanager
def _setattr(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _check_topk(table, codes, k, largest, packed=False):
    got = ops.adc_topk(table, codes, k, largest=largest, packed=packed)
    plain = ops.unpack4(codes, table.shape[1]) if packed else codes
    bv, bi = brute.adc_topk(table.double().numpy(), plain.numpy(), k, largest)
    np.testing.assert_array_equal(got[1].numpy(), bi)
    np.testing.assert_array_equal(got[0].numpy(), bv)


@pytest.mark.parametrize("Q,M,K,N", [(3, 5, 16, 3000), (1, 1, 7, 1), (20, 3, 200, 777), (4, 8, 256, 0), (0, 2, 5, 9)])
@pytest.mark.parametrize("k", [1, 7, 32])
def test_adc_topk_select_path_with_ties(Q, M, K, N, k):
    rng = np.random.default_rng(Q + M + N + k)
    table = torch.from_numpy(rng.integers(0, 4, (Q, M, K)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8))
    for largest in (False, True):
        _check_topk(table, codes, k, largest)
    if K == 16:
        _check_topk(table, ops.pack4(codes), k, False, packed=True)


def test_adc_topk_sort_path_multipass_and_chunks():
    from sqret.ops import triton_backend
    from sqret_kernels import adc

    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.integers(0, 3, (2, 3, 16)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 16, (300, 3)).astype(np.uint8))
    for k in (33, 64, 100):  # bitonic sort of the tile (the next power of two of k)
        _check_topk(table, codes, k, True)
    with _setattr(adc, "FUSED_MAX_K", 8):
        for k in (9, 299, 300, 310):  # multi-pass: distances, then a stable top-k
            _check_topk(table, codes, k, False)
    with _setattr(triton_backend, "_CHUNK", 64):
        _check_topk(table, codes, 5, False)  # chunks of codes merged with a running top-k
        _check_topk(table, ops.pack4(codes), 12, True, packed=True)


def test_adc_topk_float_values_and_ids_mapping():
    rng = np.random.default_rng(1)
    table = torch.from_numpy(rng.standard_normal((4, 6, 32)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 32, (999, 6)).astype(np.uint8))
    got = ops.adc_topk(table, codes, 20)
    with sqret.use_backend("reference"):
        want = ops.adc_topk(table, codes, 20)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    labels = torch.from_numpy(rng.permutation(10**6)[:999].astype(np.int64))
    _, ids = ops.adc_topk(table, codes, 20, ids=labels)
    assert torch.equal(ids, labels[want[1]])


def test_opcheck_with_triton_forced():
    OPS = torch.ops.sqret
    x, C = torch.randn(9, 12, requires_grad=True), torch.randn(3, 8, 4, requires_grad=True)
    for metric in ops.METRICS:
        torch.library.opcheck(OPS.soft_quantize.default, (x, C, 0.5, metric))
        torch.library.opcheck(OPS.assign_probs.default, (x, C, 0.5, metric))
        torch.library.opcheck(OPS.encode.default, (x.detach(), C.detach(), metric))
        torch.library.opcheck(OPS.build_lut.default, (x.detach(), C.detach(), metric, None))
    codes = torch.randint(0, 8, (50, 3), dtype=torch.uint8)
    torch.library.opcheck(OPS.decode.default, (codes, C, False))
    torch.library.opcheck(OPS.adc_topk.default, (torch.randn(2, 3, 8), codes, 5, False, False))


def test_interpreter_backend_is_never_chosen_automatically_on_cpu():
    with sqret.use_backend("auto"):
        assert ops.select("soft_quantize", "cpu")[0] != "triton"


def test_streaming_scan_merges_across_tiles_and_programs():
    """The running top-k of one program over many tiles (a tile merged only when it beats the k-th best),
    several programs per query block, against the float64 brute force; integer tables make ties."""
    from sqret_kernels import adc

    rng = np.random.default_rng(5)
    table = torch.from_numpy(rng.integers(0, 5, (5, 4, 16)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 16, (2500, 4)).astype(np.uint8))
    cfg = adc.stream_config(10, 4)
    assert 2500 > 4 * 2 * cfg["BLOCK_N"]  # at least two tiles per program, four programs
    for k in (1, 10):
        _check_topk(table, codes, k, False)
    _check_topk(table[:2], codes[:1100], 32, True)
    _check_topk(table[:2], codes[:500], 33, True)  # the bitonic merge: ties, several tiles per program


def test_streaming_scan_traffic_model_within_five_percent():
    """Bytes moved beyond the codes at N = 100M on a 132-SM GPU (the grid the launcher sizes), k <= 100."""
    from sqret.ops import triton_backend
    from sqret_kernels import adc

    sms, chunk = 132, triton_backend._CHUNK
    for Q in (1, 2, 4, 8, 16):
        for k in (1, 10, 100):
            bq = min(1 << (Q - 1).bit_length(), 4)
            pn = max(1, min(adc.PROGRAMS_PER_SM * sms // -(-Q // bq), -(-chunk // adc.stream_config(k, bq)["BLOCK_N"])))
            t = adc.traffic(Q, chunk, 16, k, pn)  # one launch (the scan goes chunk by chunk)
            assert t["overhead"] <= 0.05, (Q, k, t)
            assert t["codes_read"] == chunk * 16


@pytest.mark.parametrize("metric,by_residual,nbits,fast", [("l2", True, 8, False), ("l2", True, 4, True),
                                                          ("ip", True, 4, False), ("l2", False, 8, False),
                                                          ("ip", False, 4, True)])
def test_ivf_scan_matches_the_cpu_search(metric, by_residual, nbits, fast):
    """The GPU IVF scan (interpreted) against the CPU IVF search: identical ids on tie-free data, distances
    within float32 rounding; residual tables per (query, list) or shared; plain and packed 4-bit codes."""
    from sqret.index import IVFPQIndex

    M = 5 if nbits == 8 else 4
    x = torch.from_numpy(_np((1500, M * 3), 11).astype(np.float32))
    index = IVFPQIndex(M * 3, 9, M, nbits, metric, fast_scan=fast, by_residual=by_residual)
    with sqret.use_backend("auto"):
        index.train(x)
        index.add(x)
    q = torch.from_numpy(_np((6, M * 3), 12).astype(np.float32))
    for k in (1, 10):
        with sqret.use_backend("auto"):
            want = index.search(q, k, nprobe=4)
        got = index.search(q, k, nprobe=4)  # the triton backend: its ivf_search on the lists' device copy
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    s, q = index._state, q[:2]
    probes = ops.coarse_probe(q, s.centroids, 3, metric)
    probes[0, 1:] = -1  # no list
    with sqret.use_backend("auto"):
        want = ops.ivf_search(q, s.centroids, s.codebooks, s.lists, None, probes, 33, metric, by_residual=by_residual)
    got = ops.ivf_search(q, s.centroids, s.codebooks, s.lists, None, probes, 33, metric, by_residual=by_residual)
    assert torch.equal(got[1], want[1])  # the bitonic merge, and padding past the probed entries
    assert bool(torch.isinf(got[0][got[1] < 0]).all())


def test_ivf_scan_large_k_and_empty_inputs():
    from sqret.index import IVFPQIndex

    x = torch.from_numpy(_np((200, 8), 13).astype(np.float32))
    index = IVFPQIndex(8, 4, 2, 4)
    with sqret.use_backend("auto"):
        index.train(x)
        index.add(x[:150])
        want = index.search(x[:2], 1100, nprobe=4)
    got = index.search(x[:2], 1100, nprobe=4)  # k above the fused limit: the reference, padded
    assert torch.equal(got[1], want[1]) and (got[1][:, 150:] == -1).all()
    v, i = index.search(x[:0], 5, nprobe=2)
    assert v.shape == i.shape == (0, 5)


def test_device_lists_are_built_once_in_id_order():
    from sqret.index import IVFPQIndex

    x = torch.from_numpy(_np((300, 8), 14).astype(np.float32))
    index = IVFPQIndex(8, 3, 2, 8)
    with sqret.use_backend("auto"):
        index.train(x)
        index.add(x, ids=torch.randperm(10_000)[:300])
    lists = index.invlists
    d = lists.device_copy("cpu")
    assert lists.device_copy("cpu") is d and d.codes.shape == (300, 2) and not d.packed
    assert d.offsets.tolist() == [0, *np.cumsum(index.list_sizes()).tolist()]
    for li in range(3):
        a, b = d.offsets[li], d.offsets[li + 1]
        assert bool((d.ids[a:b].diff() > 0).all())
    assert index.to("cpu") is index


def test_codeword_gradient_split_over_the_batch():
    """Partial codeword gradients per batch split, summed in a fixed order: equal to one split (within float
    rounding), deterministic run to run, and against the reference."""
    from sqret_kernels import soft

    x, C, g = torch.randn(700, 12), torch.randn(3, 20, 4), torch.randn(700, 12)
    gx1, gc1 = soft._backward(g, x, C, 0.4, "l2", probs=False, splits=1)
    gx3, gc3 = soft._backward(g, x, C, 0.4, "l2", probs=False, splits=3)
    gx3b, gc3b = soft._backward(g, x, C, 0.4, "l2", probs=False, splits=3)
    assert torch.equal(gc3, gc3b) and torch.equal(gx1, gx3)
    torch.testing.assert_close(gc3, gc1, rtol=1e-5, atol=1e-5)
    with sqret.use_backend("reference"):
        xr, Cr = x.clone().requires_grad_(), C.clone().requires_grad_()
        (ops.soft_quantize(xr, Cr, 0.4) * g).sum().backward()
    torch.testing.assert_close(gc3, Cr.grad, rtol=1e-4, atol=1e-4)
    p = torch.randn(700, 3, 20)
    _, gp1 = soft._backward(p, x, C, 0.4, "ip", probs=True, splits=1)
    _, gp5 = soft._backward(p, x, C, 0.4, "ip", probs=True, splits=5)
    torch.testing.assert_close(gp5, gp1, rtol=1e-5, atol=1e-5)
    assert soft.batch_splits(65_536) * 16 * (256 // 64) >= 2 * 132  # programs to fill an H200 at B = 65,536


def test_autotune_lists_pruned_by_shared_memory(monkeypatch):
    from sqret_kernels import soft

    every = [soft.triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w, num_stages=st)
             for bb, bk, w, st in soft.CONFIGS + soft.FORWARD[32]]
    for backward in (False, True):
        for bd in (16, 32, 64, 128):
            assert soft.configs(bd, backward)
    monkeypatch.setattr(soft, "_smem_limit", lambda: 60_000)
    kept = soft._pruner(False)(every, {}, BLOCK_D=32)
    assert kept and all(soft.smem_estimate(c, 32) <= 60_000 for c in kept)
    assert {soft._key(c) for c in kept} <= set(soft.FORWARD[32]) and len(kept) < len(every)
    split = [soft.triton.Config({"BLOCK_B": bb, "BLOCK_K": bk}, num_warps=w, num_stages=st)
             for bb, bk, w, st in soft.BACKWARD_SPLIT[32] + soft.BACKWARD[32]]
    kept = soft._pruner(True)(split, {}, BLOCK_D=32, SPLIT=True)  # chunked lanes: the split table's
    assert {soft._key(c) for c in kept} == set(soft.BACKWARD_SPLIT[32])
    for d, ieee in ((128, True), (100, True), (129, False), (4096, True)):
        for backward in (False, True):
            meta = soft.lanes(d, ieee, backward)
            assert meta["SPLIT"] == (d > (64 if backward and ieee else 128))
            assert soft.configs(meta["BLOCK_D"], backward, meta["SPLIT"])
    monkeypatch.setattr(soft, "_smem_limit", lambda: 1)
    assert len(soft._pruner(True)(every, {}, BLOCK_D=16)) == 1  # never empty: the smallest
