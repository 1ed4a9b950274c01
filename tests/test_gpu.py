"""The triton backend on a CUDA GPU against the reference (skipped without one; benchmarks/gpu_check.sh runs
it on a GPU machine). Same contracts as tests/test_triton.py, at GPU sizes, plus peak-memory checks."""

import numpy as np
import pytest
import torch

import sqret
from sqret import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

DEV = "cuda"


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def both(fn):
    with sqret.use_backend("triton"):
        got = fn()
    with sqret.use_backend("reference"):
        want = fn()
    return got, want


@pytest.mark.parametrize("B,M,K,d", [(4097, 16, 256, 16), (1000, 8, 16, 64), (33, 5, 13, 7), (0, 4, 8, 2)])
@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
def test_soft_ops_forward_backward(B, M, K, d, metric):
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(B, M * d, device=DEV, generator=g)
    C = torch.randn(M, K, d, device=DEV, generator=g)
    gz = torch.randn(B, M * d, device=DEV, generator=g)

    def run():
        xr, Cr = x.clone().requires_grad_(), C.clone().requires_grad_()
        z = ops.soft_quantize(xr, Cr, 0.3, metric)
        return (z,) + torch.autograd.grad((z * gz).sum(), (xr, Cr)) + (ops.assign_probs(x, C, 0.3, metric),
                                                                       ops.build_lut(x, C, metric))

    got, want = both(run)
    for a, b in zip(got, want, strict=True):
        if b.numel():
            assert rel(a, b) < 1e-4
    codes_t, codes_r = both(lambda: ops.encode(x, C, metric))
    assert (codes_t == codes_r).float().mean() > 0.999 if B else codes_t.shape == (0, M)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    x, C = torch.randn(2048, 256, device=DEV), torch.randn(16, 256, 16, device=DEV)
    with sqret.use_backend("reference"):
        ref = ops.soft_quantize(x, C, 0.5)
    with sqret.use_backend("triton"):
        xh, Ch = x.to(dtype).requires_grad_(), C.to(dtype).requires_grad_()
        z = ops.soft_quantize(xh, Ch, 0.5)
        z.float().sum().backward()
    assert z.dtype == dtype and rel(z.detach(), ref) < 2e-2 and torch.isfinite(xh.grad.float()).all()


@pytest.mark.parametrize("k", [1, 10, 32, 33, 100, 1000, 1024, 1025, 2048])
@pytest.mark.parametrize("packed", [False, True])
def test_adc_topk_paths_with_ties(k, packed):
    rng = np.random.default_rng(k)
    K = 16 if packed else 256
    table = torch.from_numpy(rng.integers(0, 8, (7, 16, K)).astype(np.float32)).to(DEV)
    codes = torch.from_numpy(rng.integers(0, K, (300_001, 16)).astype(np.uint8)).to(DEV)
    c = ops.pack4(codes) if packed else codes
    for largest in (False, True):
        got, want = both(lambda: ops.adc_topk(table, c, k, largest=largest, packed=packed))  # noqa: B023
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_adc_topk_k_larger_than_n_and_empty():
    table = torch.randn(3, 8, 256, device=DEV)
    codes = torch.randint(0, 256, (50, 8), dtype=torch.uint8, device=DEV)
    got, want = both(lambda: ops.adc_topk(table, codes, 80))
    assert torch.equal(got[1], want[1]) and (got[1][:, 50:] == -1).all()
    got, _ = both(lambda: ops.adc_topk(table, codes[:0], 5))
    assert (got[1] == -1).all()


def test_soft_quantize_memory_is_o_b_d():
    """Forward + backward at B = 65,536, M = 16, K = 256: [B, M, K] float32 would be 1 GiB."""
    x = torch.randn(65536, 256, device=DEV, requires_grad=True)
    C = torch.randn(16, 256, 16, device=DEV, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with sqret.use_backend("triton"):
        ops.soft_quantize(x, C, 0.2).sum().backward()
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    assert extra < 400, f"{extra:.0f} MiB beyond the inputs"


@pytest.mark.parametrize("d", [8, 16, 32, 64, 100, 128, 200])
def test_every_autotune_configuration(d):
    """Each configuration the autotuner can pick, launched alone (forced), against the reference."""
    from sqret_kernels import soft

    g = torch.Generator(device=DEV).manual_seed(d)
    x = torch.randn(777, 4 * d, device=DEV, generator=g)
    C = torch.randn(4, 200, d, device=DEV, generator=g)
    gz = torch.randn_like(x)
    with sqret.use_backend("reference"):
        xr, Cr = x.clone().requires_grad_(), C.clone().requires_grad_()
        zr = ops.soft_quantize(xr, Cr, 0.3)
        (zr * gz).sum().backward()
    fwd, bwd = soft.lanes(d, ieee=True), soft.lanes(d, ieee=True, backward=True)
    for cfg in (soft.configs(fwd["BLOCK_D"], split=fwd["SPLIT"])
                + soft.configs(bwd["BLOCK_D"], backward=True, split=bwd["SPLIT"])):
        with soft.forced_config(cfg), sqret.use_backend("triton"):
            xt, Ct = x.clone().requires_grad_(), C.clone().requires_grad_()
            z = ops.soft_quantize(xt, Ct, 0.3)
            (z * gz).sum().backward()
            codes = ops.encode(x, C)
        assert rel(z.detach(), zr.detach()) < 1e-4, cfg
        assert rel(xt.grad, xr.grad) < 1e-4 and rel(Ct.grad, Cr.grad) < 1e-4, cfg
        assert codes.shape == (777, 4)


@pytest.mark.parametrize("Q", [1, 4, 16])
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_streaming_scan_at_gpu_sizes(Q, k):
    g = torch.Generator(device=DEV).manual_seed(Q * k)
    lut = torch.rand(Q, 16, 256, device=DEV, generator=g)
    codes = torch.randint(0, 256, (3_000_001, 16), device=DEV, generator=g, dtype=torch.uint8)
    got = ops.adc_topk(lut, codes, k)
    with sqret.use_backend("reference"):
        want = ops.adc_topk(lut, codes, k)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-5)


@pytest.mark.parametrize("nbits,fast,metric", [(8, False, "l2"), (4, True, "l2"), (4, False, "ip")])
def test_ivf_search_on_the_gpu_matches_the_cpu(nbits, fast, metric):
    from sqret.index import IVFPQIndex

    x = torch.randn(20_000, 64)
    index = IVFPQIndex(64, 64, 16, nbits, metric, fast_scan=fast)
    index.train(x)
    index.add(x)
    q = torch.randn(300, 64)
    want = index.search(q, 10, nprobe=8)
    got = index.search(q.to(DEV), 10, nprobe=8)  # CUDA queries search on the GPU
    assert got[1].device.type == "cuda"
    assert (got[1].cpu() == want[1]).float().mean() > 0.999
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-4, atol=1e-4)
    index.to(DEV)
    again = index.search(q, 10, nprobe=8)
    assert torch.equal(again[1], got[1])
