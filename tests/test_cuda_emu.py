"""csrc/cuda run on the CPU: kernels.cu and soft.cu, the sources the GPU build compiles, compiled as C++ against
tests/cuda_emu/include/cuda_runtime.h (a CUDA runtime on the CPU: each block's threads as real threads,
__syncthreads a barrier, shared memory filled with garbage first, the device's SM count and shared-memory limit
settable) and called through the same host code (plans, dispatch, launches). Every buffer sits next to an
inaccessible page, so an out-of-bounds access faults. Results against the reference (ADC top-k, ties
included) and against float64 formulas (soft quantization forward and backward). What this cannot show: the
GPU's memory model, warp scheduling, fast-math intrinsics and speed (tests/test_cuda.py on a GPU)."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sqret import ops
from sqret.ops import reference

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the CUDA emulation")
P, I, LL, F, B8 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_float, ctypes.c_bool
SIGNATURES = {
    "emu_set_device": (None, [I, I]),
    "emu_error": (ctypes.c_char_p, []),
    "emu_launches": (LL, []),
    "emu_adc_programs": (I, [I, I, I, LL, I, I]),
    "emu_adc_topk_stream": (I, [P, I, I, I, P, LL, I, B8, B8, I, I, P, I]),
    "emu_encode": (I, [P, LL, P, I, I, I, I, P]),
    "emu_soft_quantize": (I, [P, LL, P, I, I, I, F, I, P]),
    "emu_soft_quantize_backward": (I, [P, P, LL, P, I, I, I, F, I, P, P]),
}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_emu") / "cuda_emu.so"
    cuda = ROOT / "csrc" / "cuda"
    subprocess.run([CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror",
                    "-Wno-unknown-pragmas", f"-I{ROOT / 'tests/cuda_emu/include'}", f"-I{ROOT / 'csrc'}",
                    f"-I{cuda}", "-x", "c++", str(cuda / "kernels.cu"), str(cuda / "soft.cu"),
                    str(ROOT / "tests/cuda_emu/driver.cpp"), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    for name, (res, args) in SIGNATURES.items():
        getattr(lib, name).restype = res
        getattr(lib, name).argtypes = args
    return lib


def _ok(lib, rc: int) -> None:
    assert rc == 0, lib.emu_error().decode()


SELECTS = {"block": 0, "warp": 1}


def emu_topk(lib, lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool, sms: int = 1,
             max_smem: int = 227 * 1024, select: str = "block"):
    """What cuda_backend.adc_topk does with the kernel's keys (one launch: N < 2**30 here); select: the
    block-pool kernel or the warp-select one."""
    lib.emu_set_device(sms, max_smem)
    lut, codes = lut.to(torch.float32).contiguous(), codes.contiguous()
    Q, M, K = lut.shape
    N = codes.shape[0]
    kk = min(k, N)
    programs = lib.emu_adc_programs(Q, M, K, N, kk, SELECTS[select])
    assert programs > 0, lib.emu_error().decode()
    keys = torch.full((Q, programs * kk), 12345, dtype=torch.int64)  # every slot must be written
    _ok(lib, lib.emu_adc_topk_stream(lut.data_ptr(), Q, M, K, codes.data_ptr(), N, codes.shape[1], packed, largest,
                                     kk, programs, keys.data_ptr(), SELECTS[select]))
    assert not (keys == 12345).any()
    keys = keys.sort(dim=1).values[:, :kk]
    v, i = reference.keys_to_topk(keys, -1.0 if largest else 1.0)
    return reference.pad_topk(v, i, k, largest)


# ------------------------------------------------------------------------------------------ ADC scan + top-k

# (Q, M, K, packed, N, k, sms, max_smem): 16-byte rows (16 codes, 32 nibbles), other widths, 1 to 5 queries
# (2 and 4 per block, a partial block), one program and several, k from 1 to 1,024 (pools of 1,024 and 2,048
# keys, merges during the scan), k > N, and a shared memory too small for the LUT (read from global memory,
# 2 queries per block and a partial block).
CASES = [
    (1, 16, 256, False, 3000, 10, 1, 227 * 1024),
    (5, 16, 256, False, 2500, 33, 1, 227 * 1024),
    (3, 32, 16, True, 2100, 100, 2, 227 * 1024),
    (2, 7, 100, False, 1500, 600, 1, 227 * 1024),
    (4, 9, 16, True, 1800, 1, 1, 227 * 1024),
    (1, 16, 256, False, 700, 1024, 1, 227 * 1024),
    (2, 16, 256, False, 40, 64, 1, 227 * 1024),
    (5, 16, 256, False, 2000, 20, 1, 10 * 1024),
    (3, 16, 256, False, 2000, 20, 1, 20 * 1024),
]


@pytest.mark.parametrize("select", ["block", "warp"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "Q{}-M{}-K{}-{}-N{}-k{}-sms{}-smem{}".format(*c))
def test_adc_stream_equals_reference_with_ties(emu, case, select):
    Q, M, K, packed, N, k, sms, smem = case
    if select == "warp" and min(k, N) > 256:
        pytest.skip("the warp-select kernel takes k <= 256")
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    table = torch.from_numpy(rng.integers(0, 4, (Q, M, K)).astype(np.float32))  # many equal distances
    codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8))
    c = ops.pack4(codes) if packed else codes
    for largest in (False, True):
        got = emu_topk(emu, table, c, k, largest, packed, sms, smem, select)
        want = reference.adc_topk(table, c, k, largest, packed)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0].to(torch.float32))


@pytest.mark.parametrize("select", ["block", "warp"])
def test_adc_stream_float_tables_and_unaligned_rows(emu, select):
    """Float tables (no ties), and 16-byte rows at an address that is not 16-byte aligned (the byte-wise path)."""
    rng = np.random.default_rng(7)
    table = torch.from_numpy(rng.standard_normal((3, 16, 256)).astype(np.float32))
    raw = torch.from_numpy(rng.integers(0, 256, 2000 * 16 + 1).astype(np.uint8))
    codes = raw[1:].view(2000, 16)
    assert codes.data_ptr() % 16
    got = emu_topk(emu, table, codes, 50, False, False, select=select)
    want = reference.adc_topk(table, codes, 50, False, False)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("select", ["block", "warp"])
@pytest.mark.parametrize("order", ["best_first", "best_last", "top_spread"])
@pytest.mark.parametrize("k", [5, 100, 700])
def test_adc_stream_database_sorted_by_distance(emu, order, k, select):
    """All of the top-k in the first program's slice: best first (the first tiles fill the pool, the threshold
    then filters nearly everything), best last (every code beats the threshold), or spread so that about 80% of
    them come before the first merge (512 codes, 1,024 for pools of 2,048) and the rest after, among the worst
    codes: a threshold tighter than the k-th best, or a lost merge, drops some (for the warp kernel, in the
    codes warp 0 sees: 32 of every 256)."""
    if select == "warp" and k > 256:
        pytest.skip("the warp-select kernel takes k <= 256")
    rng = np.random.default_rng(k)
    table = torch.from_numpy(rng.integers(0, 50, (2, 16, 256)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 256, (12_000, 16)).astype(np.uint8))
    _, ranked = reference.adc_topk(table[:1], codes, codes.shape[0], False, False)
    ranked = ranked[0]
    if order == "best_last":
        ranked = ranked.flip(0)
    elif order == "top_spread":
        # the positions in the order the first selection unit sees them, and how many before its first merge
        if select == "block":
            seen, first = torch.arange(len(ranked)), 1024 if k > 256 else 512
        else:  # warp 0: 32 codes every 256; it folds once its pool (pow2(kp + 32)) could overflow
            j = torch.arange(len(ranked) // 8)
            seen = (j // 32) * 256 + j % 32
            kp = 1 << (k - 1).bit_length()
            pool = 1 << (kp + 32 - 1).bit_length()
            first = 32 * (-(-(pool - kp - 31) // 32))
        spacing = first / (0.8 * k)
        at = seen[torch.tensor(sorted({int(r * max(spacing, 1.0)) for r in range(k)}))]
        assert len(at) == k
        out = torch.empty_like(ranked)
        out[at] = ranked[:k]
        rest = torch.ones(len(ranked), dtype=torch.bool)
        rest[at] = False
        out[rest] = ranked[k:].flip(0)  # the worst codes first
        ranked = out
    codes = codes[ranked].contiguous()
    got = emu_topk(emu, table, codes, k, False, False, select=select)
    want = reference.adc_topk(table, codes, k, False, False)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_adc_stream_rejects_a_mismatched_output_and_bad_rows(emu):
    emu.emu_set_device(2, 227 * 1024)
    lut, codes = torch.zeros(2, 16, 256), torch.zeros(1000, 16, dtype=torch.uint8)
    programs = emu.emu_adc_programs(2, 16, 256, 1000, 10, 0)
    keys = torch.empty(2, (programs + 1) * 10, dtype=torch.int64)
    assert emu.emu_adc_topk_stream(lut.data_ptr(), 2, 16, 256, codes.data_ptr(), 1000, 16, False, False, 10,
                                   programs + 1, keys.data_ptr(), 0) == -1
    assert "sized for" in emu.emu_error().decode()
    assert emu.emu_adc_topk_stream(lut.data_ptr(), 2, 16, 256, codes.data_ptr(), 1000, 8, False, False, 10,
                                   programs, keys.data_ptr(), 0) == -1
    assert "row_bytes" in emu.emu_error().decode()
    assert emu.emu_adc_programs(2, 16, 256, 1000, 257, 1) == -1  # the warp-select kernel: k <= 256
    assert "keep <= 256" in emu.emu_error().decode()


# ------------------------------------------------------------------------------------------ encode


@pytest.mark.parametrize("metric", [0, 1])
def test_encode_picks_the_nearest_codeword(emu, metric):
    rng = np.random.default_rng(metric)
    x = torch.from_numpy(rng.standard_normal((301, 3 * 5)).astype(np.float32))
    C = torch.from_numpy(rng.standard_normal((3, 37, 5)).astype(np.float32))
    out = torch.empty(301, 3, dtype=torch.int32)
    _ok(emu, emu.emu_encode(x.data_ptr(), 301, C.data_ptr(), 3, 37, 5, metric, out.data_ptr()))
    want = reference.encode(x, C, "l2" if metric == 0 else "ip")
    assert torch.equal(out.long(), want.long())


# ------------------------------------------------------------------------------------------ soft quantization


def _soft64(x, C, tau, metric):
    """z = per sub-space softmax(s / tau) @ C_m in float64, s = -||x - c||^2 (l2) or x . c (ip)."""
    B = x.shape[0]
    M, K, d = C.shape
    xs = x.view(B, M, 1, d)
    s = -((xs - C.unsqueeze(0)) ** 2).sum(-1) if metric == 0 else (xs * C.unsqueeze(0)).sum(-1)
    p = torch.softmax(s / tau, dim=-1)
    return torch.einsum("bmk,mkd->bmd", p, C).reshape(B, M * d)


# (B, M, K, d, max_smem): d in registers (<= 64) and in shared-memory columns (> 64), the codebook in shared
# memory and read from global memory (a small limit), one block and several, partial blocks.
SOFT = [(37, 3, 16, 5, 227 * 1024), (300, 2, 256, 16, 227 * 1024), (129, 2, 100, 64, 227 * 1024),
        (40, 1, 256, 130, 227 * 1024), (33, 2, 7, 256, 227 * 1024), (70, 2, 256, 16, 8 * 1024),
        (1, 1, 3, 1, 227 * 1024)]


@pytest.mark.parametrize("metric", [0, 1])
@pytest.mark.parametrize("shape", SOFT, ids=lambda s: "B{}-M{}-K{}-d{}-smem{}".format(*s))
def test_soft_quantize_forward_and_backward_against_float64(emu, shape, metric):
    B, M, K, d, smem = shape
    emu.emu_set_device(132, smem)
    g = torch.Generator().manual_seed(B * 7 + d + metric)
    x = torch.randn(B, M * d, generator=g)
    C = torch.randn(M, K, d, generator=g) * (0.3 if metric == 1 else 1.0)
    grad = torch.randn(B, M * d, generator=g)
    tau = 0.7 * d
    z = torch.full((B, M * d), float("nan"))
    _ok(emu, emu.emu_soft_quantize(x.data_ptr(), B, C.data_ptr(), M, K, d, tau, metric, z.data_ptr()))
    gx = torch.full((B, M * d), float("nan"))
    gc = torch.full((M, K, d), float("nan"))
    _ok(emu, emu.emu_soft_quantize_backward(grad.data_ptr(), x.data_ptr(), B, C.data_ptr(), M, K, d, tau, metric,
                                            gx.data_ptr(), gc.data_ptr()))
    x64, C64 = x.double().requires_grad_(), C.double().requires_grad_()
    z64 = _soft64(x64, C64, tau, metric)
    want_gx, want_gc = torch.autograd.grad(z64, (x64, C64), grad.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()

    assert rel(z, z64.detach()) < 1e-5
    assert rel(gx, want_gx) < 1e-4 and rel(gc, want_gc) < 1e-4


def test_soft_quantize_empty_batch_zeroes_the_codebook_gradient(emu):
    emu.emu_set_device(132, 227 * 1024)
    C = torch.randn(2, 16, 4)
    gc = torch.full((2, 16, 4), float("nan"))
    empty = torch.empty(0)
    _ok(emu, emu.emu_soft_quantize_backward(empty.data_ptr(), empty.data_ptr(), 0, C.data_ptr(), 2, 16, 4, 1.0, 0,
                                            empty.data_ptr(), gc.data_ptr()))
    assert torch.equal(gc, torch.zeros_like(gc))


def test_a_launch_over_the_shared_memory_limit_fails(emu):
    """The row buffers of d = 256 do not fit 8 KB of shared memory: an error, not a launch."""
    emu.emu_set_device(132, 8 * 1024)
    x, C, z = torch.randn(4, 256), torch.randn(1, 8, 256), torch.empty(4, 256)
    assert emu.emu_soft_quantize(x.data_ptr(), 4, C.data_ptr(), 1, 8, 256, 1.0, 0, z.data_ptr()) == -1
    assert "shared memory" in emu.emu_error().decode()
