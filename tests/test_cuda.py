"""The cuda backend (csrc/cuda). In CI (nvcc, no GPU) the module must build and load and the backend must say
why it is unavailable; on a GPU machine (benchmarks/gpu_check.sh) the kernels are compared with the reference."""

import os
import shutil

import numpy as np
import pytest
import torch

import sqret
from sqret import ops

CUDA = {b.name: b for b in sqret.backends()}["cuda"]
GPU = pytest.mark.skipif(not CUDA.available, reason=f"cuda backend unavailable: {CUDA.reason}")
NVCC = pytest.mark.skipif(not shutil.which("nvcc") and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                          reason="no nvcc: the CUDA module is not built on this machine")


@NVCC
def test_module_is_built_and_reports_why_it_is_unavailable():
    from sqret import _cuda

    assert _cuda.adc_max_keep == 1024
    if not torch.cuda.is_available():
        assert _cuda.device_count() == 0
        assert not CUDA.available and "no CUDA GPU" in CUDA.reason
        with pytest.raises(RuntimeError, match="does not run on cpu tensors|unavailable"):
            with sqret.use_backend("cuda"):
                ops.encode(torch.randn(2, 4), torch.randn(2, 3, 2))


@NVCC
@pytest.mark.parametrize("select", [0, 1])
@pytest.mark.parametrize("sms,max_smem", [(132, 227 * 1024), (108, 163 * 1024), (30, 48 * 1024)])
def test_streaming_scan_plan_fits_the_gpu_and_covers_the_codes(sms, max_smem, select):
    """The launch plan of the CUDA streaming scan (pure host code): every code in exactly one program's slice,
    the pool holds a whole tile after any merge, shared memory within the block limit, a grid of a few
    blocks per SM, the LUT in shared memory whenever one query's table and pool fit."""
    from sqret import _cuda

    rng = np.random.default_rng(sms)
    shapes = [(1, 16, 256, 10**8, 100), (16, 16, 256, 10**8, 10), (1024, 16, 256, 10**7, 100), (3, 7, 100, 1, 1),
              (5, 128, 256, 3_000_001, 1024), (2, 64, 256, 1000, 1024), (9, 32, 16, 2**30, 33)]
    shapes += [(int(rng.integers(1, 2000)), int(rng.integers(1, 200)), int(rng.choice([16, 100, 256])),
                int(rng.integers(1, 10**7)), int(rng.integers(1, 1025))) for _ in range(200)]
    max_keep = 256 if select else 1024
    for Q, M, K, N, keep in shapes:
        keep = min(keep, max_keep)
        p = _cuda.adc_plan(Q, M, K, N, keep, sms, max_smem, select)
        assert p["select"] == select
        assert p["kp"] >= keep and p["kp"] & (p["kp"] - 1) == 0 and p["pool"] & (p["pool"] - 1) == 0
        # the pool holds one step of candidates after any merge: a tile (256 threads x 2 codes), a warp's 32
        assert p["pool"] - p["kp"] >= (32 if select else 512)
        assert p["per_block"] % 512 == 0 and (p["programs"] - 1) * p["per_block"] < N <= p["programs"] * p["per_block"]
        assert p["smem"] <= max_smem and p["qb"] in (1, 2, 4) and p["qb"] <= Q
        qblocks = -(-Q // p["qb"])
        assert p["programs"] <= max(1, 4 * sms // qblocks)
        keys, fixed = (8 * 8 * p["pool"], 8 * p["mpool"]) if select else (p["pool"] * 8 + 12, 0)
        if select:
            assert p["mpool"] >= 8 * p["kp"]  # the 8 warps' lists, merged at the end
        assert p["smem"] == fixed + p["qb"] * (keys + (M * K * 4 if p["lut_smem"] else 0))
        assert p["lut_smem"] == (fixed + keys + M * K * 4 <= min(100 * 1024, max_smem))
    for bad in ((1, 16, 256, 10, max_keep + 1), (0, 16, 256, 10, 1), (1, 16, 256, 0, 1), (1, 16, 256, 10, 0)):
        with pytest.raises(ValueError, match="adc_plan"):
            _cuda.adc_plan(*bad, sms, max_smem, select)


@NVCC
@pytest.mark.parametrize("select", [0, 1])
def test_streaming_scan_traffic_model_within_five_percent(select):
    """Bytes moved beyond the codes by one CUDA launch on an H200-sized GPU, k <= 100, Q <= 16."""
    from sqret.ops import cuda_backend

    for N in (10**8, cuda_backend._CHUNK):
        for Q in (1, 2, 4, 8, 16):
            for k in (1, 10, 100):
                t = cuda_backend.traffic(Q, 16, 256, N, 16, k, select=select)
                assert t["overhead"] <= 0.05, (N, Q, k, t)
                assert t["codes_read"] == N * 16 and t["code_passes"] == -(-Q // t["plan"]["qb"])


def both(fn):
    with sqret.use_backend("cuda"):
        got = fn()
    with sqret.use_backend("reference"):
        want = fn()
    return got, want


@NVCC
def test_streaming_scan_variant_from_the_environment(monkeypatch):
    from sqret.ops import cuda_backend

    assert cuda_backend.adc_select(10) == 0
    monkeypatch.setenv("SQRET_CUDA_ADC", "warp")
    assert cuda_backend.adc_select(256) == 1 and cuda_backend.adc_select(257) == 0
    monkeypatch.setenv("SQRET_CUDA_ADC", "fast")
    with pytest.raises(ValueError, match="SQRET_CUDA_ADC"):
        cuda_backend.adc_select(10)


@GPU
@pytest.mark.parametrize("select", ["block", "warp"])
@pytest.mark.parametrize("N", [0, 1, 2047, 2049, 100_003, 3_000_001])
@pytest.mark.parametrize("k", [1, 10, 100, 1024, 2048])
def test_adc_topk_equals_reference_with_ties(N, k, select, monkeypatch):
    monkeypatch.setenv("SQRET_CUDA_ADC", select)
    rng = np.random.default_rng(N + k)
    # 16-byte rows (one load: 16 codes, 32 nibbles), other widths, a LUT too large for shared memory;
    # 1, 2, 3 and 5 queries (4 per block and a partial block)
    for M, K, packed in ((16, 256, False), (32, 16, True), (7, 100, False), (9, 16, True), (128, 256, False)):
        if M == 128 and N > 100_003:
            continue
        for Q in (1, 2, 3, 5):
            table = torch.from_numpy(rng.integers(0, 6, (Q, M, K)).astype(np.float32)).cuda()
            codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8)).cuda()
            c = ops.pack4(codes) if packed else codes
            for largest in (False, True):
                got, want = both(lambda: ops.adc_topk(table, c, k, largest=largest, packed=packed))  # noqa: B023
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@GPU
def test_adc_topk_unaligned_16_byte_rows():
    """16-byte rows at an address that is not 16-byte aligned take the byte-wise path."""
    N = 70_001
    raw = torch.randint(0, 256, (N * 16 + 1,), dtype=torch.uint8, device="cuda")
    codes = raw[1:].view(N, 16)
    table = torch.randn(3, 16, 256, device="cuda")
    got, want = both(lambda: ops.adc_topk(table, codes, 50))
    assert torch.equal(got[1], want[1])


@GPU
def test_adc_topk_float_lut_and_large_k_fallback():
    table = torch.randn(3, 16, 256, device="cuda")
    codes = torch.randint(0, 256, (50_000, 16), dtype=torch.uint8, device="cuda")
    for k in (7, 1025, 3000):  # above 1024: the next implementation, still correct
        got, want = both(lambda: ops.adc_topk(table, codes, k))  # noqa: B023
        assert torch.equal(got[1], want[1])


@GPU
@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
def test_encode_picks_a_nearest_codeword(metric):
    x, C = torch.randn(5001, 60, device="cuda"), torch.randn(12, 256, 5, device="cuda")
    got, want = both(lambda: ops.encode(x, C, metric))
    assert got.dtype == torch.uint8 and (got == want).float().mean() > 0.999


@GPU
@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
@pytest.mark.parametrize("shape", [(0, 2, 16, 4), (1, 1, 3, 1), (37, 3, 16, 5), (300, 4, 256, 16), (129, 2, 100, 64),
                                   (64, 1, 256, 130), (33, 2, 7, 256)])
def test_soft_quantize_forward_and_backward_against_float64(shape, metric, monkeypatch):
    monkeypatch.setenv("SQRET_CUDA_SOFT", "cuda")  # the CUDA kernel, not the measured default
    B, M, K, d = shape
    g = torch.Generator(device="cuda").manual_seed(B * 7 + d)
    x = torch.randn(B, M * d, device="cuda", generator=g)
    C = torch.randn(M, K, d, device="cuda", generator=g)
    grad = torch.randn(B, M * d, device="cuda", generator=g)

    def run(backend, dtype):
        xx = x.to(dtype).requires_grad_(True)
        CC = C.to(dtype).requires_grad_(True)
        with sqret.use_backend(backend):
            z = ops.soft_quantize(xx, CC, 0.5, metric)
            gx, gc = torch.autograd.grad(z, (xx, CC), grad.to(dtype)) if B else (torch.zeros_like(xx), None)
        return z, gx, gc

    z, gx, gc = run("cuda", torch.float32)
    zr, gxr, gcr = run("reference", torch.float64)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-12)).item()  # noqa: E731
    assert z.shape == (B, M * d) and rel(z, zr) < 1e-5
    if B:
        assert rel(gx, gxr) < 1e-4 and rel(gc, gcr) < 1e-4


@GPU
def test_soft_quantize_half_noncontiguous_and_policy(monkeypatch):
    from sqret.ops import cuda_backend

    monkeypatch.setenv("SQRET_CUDA_SOFT", "cuda")
    base = torch.randn(64, 2 * 32, device="cuda")
    x = base[:, ::2]  # non-contiguous [64, 32]
    C = torch.randn(2, 16, 16, device="cuda")
    with sqret.use_backend("cuda"):
        z = ops.soft_quantize(x, C, 0.3)
        zh = ops.soft_quantize(x.half(), C.half(), 0.3)
    with sqret.use_backend("reference"):
        want = ops.soft_quantize(x.double(), C.double(), 0.3)
    assert torch.allclose(z.double(), want, atol=1e-5) and zh.dtype == torch.float16
    assert torch.allclose(zh.double(), want, atol=2e-2)
    monkeypatch.setenv("SQRET_CUDA_SOFT", "auto")
    monkeypatch.setattr(cuda_backend, "_POLICY", [{"B": 100, "M": 8, "K": 16, "d": 16, "winner": "cuda"},
                                                  {"B": 100000, "M": 8, "K": 256, "d": 16, "winner": "triton"}])
    assert cuda_backend.soft_impl(128, 8, 16, 16) == "cuda"
    assert cuda_backend.soft_impl(50000, 8, 256, 16) == "triton"


def test_soft_policy_nearest_shape_without_a_gpu(monkeypatch):
    """The per-shape choice between the CUDA and Triton soft kernels (pure Python: runs in CI)."""
    from sqret.ops import cuda_backend

    monkeypatch.delenv("SQRET_CUDA_SOFT", raising=False)
    monkeypatch.setattr(cuda_backend, "_POLICY", [])
    assert cuda_backend.soft_impl(4096, 8, 256, 16) == "triton"  # unmeasured: Triton stays the default
    monkeypatch.setattr(cuda_backend, "_POLICY", [{"B": 256, "M": 4, "K": 16, "d": 16, "winner": "cuda"},
                                                  {"B": 65536, "M": 16, "K": 256, "d": 64, "winner": "triton"}])
    assert cuda_backend.soft_impl(300, 4, 16, 16) == "cuda"
    assert cuda_backend.soft_impl(40000, 16, 256, 64) == "triton"
    monkeypatch.setenv("SQRET_CUDA_SOFT", "cuda")
    assert cuda_backend.soft_impl(40000, 16, 256, 64) == "cuda"
    import json

    from benchmarks.soft_policy import policy

    doc = {"benchmarks": [{"extra_info": {"policy_shape": [8, 1, 16, 4], "backend": b}, "stats": {"median": t}}
                          for b, t in (("cuda", 1e-4), ("triton", 2e-4))]}
    assert json.loads(json.dumps(policy(doc)))["shapes"][0]["winner"] == "cuda"
