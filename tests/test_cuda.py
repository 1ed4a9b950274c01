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


@pytest.mark.skipif(not shutil.which("nvcc") and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="no nvcc: the CUDA module is not built on this machine")
def test_module_is_built_and_reports_why_it_is_unavailable():
    from sqret import _cuda

    assert _cuda.adc_chunk(10) == 2048 and _cuda.adc_chunk(2048) == 4096
    if not torch.cuda.is_available():
        assert _cuda.device_count() == 0
        assert not CUDA.available and "no CUDA GPU" in CUDA.reason
        with pytest.raises(RuntimeError, match="does not run on cpu tensors|unavailable"):
            with sqret.use_backend("cuda"):
                ops.encode(torch.randn(2, 4), torch.randn(2, 3, 2))


def both(fn):
    with sqret.use_backend("cuda"):
        got = fn()
    with sqret.use_backend("reference"):
        want = fn()
    return got, want


@GPU
@pytest.mark.parametrize("N", [0, 1, 2047, 2049, 100_003, 3_000_001])
@pytest.mark.parametrize("k", [1, 10, 100, 1024, 2048])
def test_adc_topk_equals_reference_with_ties(N, k):
    rng = np.random.default_rng(N + k)
    for M, K, packed in ((16, 256, False), (7, 100, False), (9, 16, True)):
        table = torch.from_numpy(rng.integers(0, 6, (5, M, K)).astype(np.float32)).cuda()
        codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8)).cuda()
        c = ops.pack4(codes) if packed else codes
        for largest in (False, True):
            got, want = both(lambda: ops.adc_topk(table, c, k, largest=largest, packed=packed))  # noqa: B023
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@GPU
def test_adc_topk_float_lut_and_large_k_fallback():
    table = torch.randn(3, 16, 256, device="cuda")
    codes = torch.randint(0, 256, (50_000, 16), dtype=torch.uint8, device="cuda")
    for k in (7, 3000):  # 3000 > 2048: the reference path, still correct
        got, want = both(lambda: ops.adc_topk(table, codes, k))  # noqa: B023
        assert torch.equal(got[1], want[1])


@GPU
@pytest.mark.parametrize("metric", ["l2", "ip", "cos"])
def test_encode_picks_a_nearest_codeword(metric):
    x, C = torch.randn(5001, 60, device="cuda"), torch.randn(12, 256, 5, device="cuda")
    got, want = both(lambda: ops.encode(x, C, metric))
    assert got.dtype == torch.uint8 and (got == want).float().mean() > 0.999
