"""GPU benchmarks of the triton backend against the reference (issue 3's speed targets). Needs CUDA.

Run them all with benchmarks/gpu_check.sh; results: benchmarks/gpu_report.py."""

import pytest
import torch

import sqret
from sqret import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _timed(benchmark, fn, rounds=5):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name()


def _soft_step(backend, x, C, monkeypatch):
    if backend in ("cuda", "triton_only"):  # the cuda backend's own kernel, or Triton through it
        monkeypatch.setenv("SQRET_CUDA_SOFT", "cuda" if backend == "cuda" else "triton")
    name = "cuda" if backend in ("cuda", "triton_only") else backend

    def step():
        with sqret.use_backend(name):
            return torch.autograd.grad(ops.soft_quantize(x, C, 0.2).sum(), (x, C))

    return step


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda"])
@pytest.mark.parametrize("d", [16, 64])
def test_soft_quantize_fwd_bwd(benchmark, backend, d, monkeypatch):
    x = torch.randn(65536, 16 * d, device="cuda", requires_grad=True)
    C = torch.randn(16, 256, d, device="cuda", requires_grad=True)
    benchmark.group = f"soft_quantize fwd+bwd B=65536 M=16 K=256 d={d}"
    benchmark.extra_info.update(backend=backend)
    _timed(benchmark, _soft_step(backend, x, C, monkeypatch))


# The shapes that decide the CUDA / Triton default per shape (benchmarks/soft_policy.py reads the results).
POLICY_SHAPES = [(B, M, K, d) for B in (256, 8192, 65536) for (M, K, d) in
                 ((4, 16, 16), (8, 16, 16), (4, 256, 16), (16, 256, 16), (8, 256, 64), (1, 256, 64))]


@pytest.mark.parametrize("impl", ["cuda", "triton"])
@pytest.mark.parametrize("shape", POLICY_SHAPES, ids=lambda s: "B{}-M{}-K{}-d{}".format(*s))
def test_soft_policy(benchmark, shape, impl, monkeypatch):
    B, M, K, d = shape
    x = torch.randn(B, M * d, device="cuda", requires_grad=True)
    C = torch.randn(M, K, d, device="cuda", requires_grad=True)
    benchmark.group = f"soft policy B={B} M={M} K={K} d={d}"
    benchmark.extra_info.update(backend=impl, policy_shape=[B, M, K, d])
    _timed(benchmark, _soft_step("cuda" if impl == "cuda" else "triton_only", x, C, monkeypatch))


@pytest.fixture(scope="module")
def codes100m():
    return torch.randint(0, 256, (100_000_000, 16), dtype=torch.uint8, device="cuda")


def test_copy_bandwidth(benchmark, codes100m):
    """The memory-bandwidth floor: a device copy of the 1.6 GB codes (read + write)."""
    benchmark.group = "bandwidth"
    benchmark.extra_info.update(bytes_moved=2 * codes100m.numel(), backend="torch copy")
    _timed(benchmark, lambda: codes100m.clone())


GPU_BACKENDS = [b.name for b in sqret.backends() if b.available and "cuda" in b.devices and b.name != "reference"]


def _traffic_overhead(backend: str, Q: int, N: int, k: int) -> float | None:
    """The bytes-moved model of the backend's fused scan on this GPU: bytes beyond the codes read, as a fraction."""
    props = torch.cuda.get_device_properties(0)
    if backend in ("cuda", "cuda-warp"):
        from sqret.ops import cuda_backend

        smem = getattr(props, "shared_memory_per_block_optin", 227 * 1024)
        return cuda_backend.traffic(Q, 16, 256, N, 16, k, sms=props.multi_processor_count, max_smem=smem,
                                    select=int(backend == "cuda-warp"))["overhead"]
    if backend == "triton":
        from sqret_kernels import adc

        bq = min(1 << (Q - 1).bit_length(), 4)
        pn = adc._programs_n(Q, N, bq, adc.stream_config(k, bq)["BLOCK_N"], torch.device("cuda"))
        return adc.traffic(Q, N, 16, k, pn)["overhead"]
    return None


# the cuda backend's two top-k variants (SQRET_CUDA_ADC): a pool per block, or warp select
ADC_VARIANTS = [b for b in GPU_BACKENDS if b != "cuda"] + (["cuda", "cuda-warp"] if "cuda" in GPU_BACKENDS else [])


@pytest.mark.parametrize("backend", ADC_VARIANTS)
@pytest.mark.parametrize("Q", [1, 4, 16])
def test_adc_topk_100m(benchmark, codes100m, Q, backend, monkeypatch):
    lut = torch.randn(Q, 16, 256, device="cuda")
    benchmark.group = f"adc_topk N=100M M=16 Q={Q} k=100"
    benchmark.extra_info.update(backend=backend, bytes_read=codes100m.numel(), Q=Q,
                                traffic_overhead=_traffic_overhead(backend, Q, codes100m.shape[0], 100))
    if backend == "cuda-warp":
        monkeypatch.setenv("SQRET_CUDA_ADC", "warp")
        backend = "cuda"
    with sqret.use_backend(backend):
        _timed(benchmark, lambda: ops.adc_topk(lut, codes100m, 100))


@pytest.mark.parametrize("backend", ["reference"] + GPU_BACKENDS)
def test_adc_topk_q1024_n10m(benchmark, codes100m, backend):
    codes = codes100m[:10_000_000]
    lut = torch.randn(1024, 16, 256, device="cuda")
    benchmark.group = "adc_topk N=10M M=16 Q=1024 k=100"
    benchmark.extra_info.update(backend=backend, query_codes=1024 * 10_000_000)
    with sqret.use_backend(backend):
        _timed(benchmark, lambda: ops.adc_topk(lut, codes, 100), rounds=3)


@pytest.mark.parametrize("backend", ["reference"] + GPU_BACKENDS)
def test_build_lut_and_encode(benchmark, backend):
    q, C = torch.randn(65536, 128, device="cuda"), torch.randn(16, 256, 8, device="cuda")
    benchmark.group = "build_lut + encode 65536 x 128, M=16 K=256"
    benchmark.extra_info.update(backend=backend)
    with sqret.use_backend(backend):
        _timed(benchmark, lambda: (ops.build_lut(q, C), ops.encode(q, C)))
