"""The reference ops are memory-bounded: measured peak RSS of a real process at the issue's sizes."""

import subprocess
import sys
import textwrap

import pytest

PEAK = textwrap.dedent(
    """
    import torch, sqret.ops as ops
    torch.set_num_threads(2)

    def reset_peak():
        open("/proc/self/clear_refs", "w").write("5")

    def peak_mb():
        line = [s for s in open("/proc/self/status") if s.startswith("VmHWM")][0]
        return int(line.split()[1]) / 1024

    def rss_mb():
        line = [s for s in open("/proc/self/status") if s.startswith("VmRSS")][0]
        return int(line.split()[1]) / 1024
    """
)


def _extra_peak_mb(body: str) -> float:
    code = PEAK + textwrap.dedent(body) + "\nprint(peak_mb() - base)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_adc_topk_over_20_million_codes_never_materialises_q_by_n():
    """[Q=4, N=20M] float32 distances would be 320 MB and int64 codes 2.5 GB; the scan stays far below."""
    extra = _extra_peak_mb(
        """
        codes = torch.empty(20_000_000, 16, dtype=torch.uint8).random_(0, 256)
        lut = torch.randn(4, 16, 256)
        ops.adc_topk(lut, codes[:1000], 10)  # warm-up: fault in the library code pages first
        reset_peak(); base = rss_mb()
        v, i = ops.adc_topk(lut, codes, 10)
        assert v.shape == (4, 10) and bool((i >= 0).all())
        """
    )
    assert extra < 200, f"adc_topk over 20M codes used {extra:.0f} MB beyond its inputs"


@pytest.mark.slow
def test_soft_quantize_at_65536_x_16_x_256_never_materialises_b_m_k():
    """[B, M, K] float32 would be 1 GiB; forward + backward stay within a few copies of x [B, D]."""
    extra = _extra_peak_mb(
        """
        x = torch.randn(65536, 16 * 16, requires_grad=True)
        C = torch.randn(16, 256, 16, requires_grad=True)
        ops.soft_quantize(x[:8], C, 0.2).sum().backward()  # warm-up: fault in the library code pages
        x.grad = C.grad = None
        reset_peak(); base = rss_mb()
        ops.soft_quantize(x, C, 0.2).sum().backward()
        assert x.grad.shape == x.shape and C.grad.shape == C.shape
        """
    )
    assert extra < 400, f"soft_quantize forward+backward used {extra:.0f} MB beyond its inputs"
