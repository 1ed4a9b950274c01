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

    for mod in ("sqret_kernels.soft", "sqret_kernels.lut", "sqret_kernels.adc"):
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
