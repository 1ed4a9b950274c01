"""csrc/cuda's streaming ADC kernel run on the CPU: the CUDA source compiled as C++ against csrc/cuda/emu.h
(each block's 256 threads as real threads, __syncthreads as a barrier, shared memory filled with garbage first),
through the same launch plan and dispatch as the GPU build; its keys against the reference's top-k. What this
cannot show: the GPU's memory model, warp scheduling and speed (tests/test_cuda.py on a GPU)."""

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


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_emu") / "adc_stream_emu.so"
    subprocess.run([CXX, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror",
                    "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}", str(ROOT / "tests/cuda_emu/adc_stream_emu.cpp"),
                    "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.emu_adc_programs.restype = ctypes.c_int
    lib.emu_adc_programs.argtypes = [ctypes.c_int] * 3 + [ctypes.c_longlong] + [ctypes.c_int] * 3
    lib.emu_adc_topk_stream.restype = ctypes.c_int
    lib.emu_adc_topk_stream.argtypes = ([ctypes.c_void_p] + [ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_longlong,
                                        ctypes.c_int, ctypes.c_bool, ctypes.c_bool] + [ctypes.c_int] * 3
                                        + [ctypes.c_void_p])
    return lib


def emu_topk(lib, lut: torch.Tensor, codes: torch.Tensor, k: int, largest: bool, packed: bool, sms: int,
             max_smem: int):
    """What cuda_backend.adc_topk does with the kernel's keys (one launch: N < 2**30 here)."""
    lut, codes = lut.to(torch.float32).contiguous(), codes.contiguous()
    Q, M, K = lut.shape
    N = codes.shape[0]
    kk = min(k, N)
    programs = lib.emu_adc_programs(Q, M, K, N, kk, sms, max_smem)
    assert programs > 0
    keys = torch.full((Q, programs * kk), 12345, dtype=torch.int64)  # every slot must be written
    rc = lib.emu_adc_topk_stream(lut.data_ptr(), Q, M, K, codes.data_ptr(), N, codes.shape[1], packed, largest, kk,
                                 sms, max_smem, keys.data_ptr())
    assert rc == 0
    assert not (keys == 12345).any()
    keys = keys.sort(dim=1).values[:, :kk]
    v, i = reference.keys_to_topk(keys, -1.0 if largest else 1.0)
    return reference.pad_topk(v, i, k, largest)


# (Q, M, K, packed, N, k, sms, max_smem): 16-byte rows (16 codes, 32 nibbles), other widths, 1 to 5 queries
# (2 and 4 per block, a partial block), one program and several, k from 1 to 1,024 (pools of 1,024 and 2,048
# keys, merges during the scan), k > N, and a shared memory too small for the LUT (read from global memory,
# 2 queries per block and a partial block).
CASES = [
    (1, 16, 256, False, 3000, 10, 1, 100 * 1024),
    (5, 16, 256, False, 2500, 33, 1, 100 * 1024),
    (3, 32, 16, True, 2100, 100, 2, 100 * 1024),
    (2, 7, 100, False, 1500, 600, 1, 100 * 1024),
    (4, 9, 16, True, 1800, 1, 1, 100 * 1024),
    (1, 16, 256, False, 700, 1024, 1, 100 * 1024),
    (2, 16, 256, False, 40, 64, 1, 100 * 1024),
    (5, 16, 256, False, 2000, 20, 1, 10 * 1024),
    (3, 16, 256, False, 2000, 20, 1, 20 * 1024),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Q{}-M{}-K{}-{}-N{}-k{}-sms{}-smem{}".format(*c))
def test_streaming_kernel_equals_reference_with_ties(emu, case):
    Q, M, K, packed, N, k, sms, smem = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    table = torch.from_numpy(rng.integers(0, 4, (Q, M, K)).astype(np.float32))  # many equal distances
    codes = torch.from_numpy(rng.integers(0, K, (N, M)).astype(np.uint8))
    c = ops.pack4(codes) if packed else codes
    for largest in (False, True):
        got = emu_topk(emu, table, c, k, largest, packed, sms, smem)
        want = reference.adc_topk(table, c, k, largest, packed)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0].to(torch.float32))


def test_streaming_kernel_float_tables_and_unaligned_rows(emu):
    """Float tables (no ties), and 16-byte rows at an address that is not 16-byte aligned (the byte-wise path)."""
    rng = np.random.default_rng(7)
    table = torch.from_numpy(rng.standard_normal((3, 16, 256)).astype(np.float32))
    raw = torch.from_numpy(rng.integers(0, 256, 2000 * 16 + 1).astype(np.uint8))
    codes = raw[1:].view(2000, 16)
    assert codes.data_ptr() % 16
    got = emu_topk(emu, table, codes, 50, False, False, 1, 100 * 1024)
    want = reference.adc_topk(table, codes, 50, False, False)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("order", ["best_first", "best_last", "top_spread"])
@pytest.mark.parametrize("k", [5, 100, 700])
def test_streaming_kernel_database_sorted_by_distance(emu, order, k):
    """All of the top-k in the first program's slice: best first (the first tiles fill the pool, the threshold
    then filters nearly everything), best last (every code beats the threshold), or spread so that about 80% of
    them come before the first merge (512 codes, 1,024 for pools of 2,048) and the rest after, among the worst
    codes: a threshold tighter than the k-th best, or a lost merge, drops some."""
    rng = np.random.default_rng(k)
    table = torch.from_numpy(rng.integers(0, 50, (2, 16, 256)).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 256, (12_000, 16)).astype(np.uint8))
    _, ranked = reference.adc_topk(table[:1], codes, codes.shape[0], False, False)
    ranked = ranked[0]
    if order == "best_last":
        ranked = ranked.flip(0)
    elif order == "top_spread":
        spacing = (1024 if k > 256 else 512) / (0.8 * k)
        at = torch.tensor(sorted({int(r * max(spacing, 1.0)) for r in range(k)}))
        assert len(at) == k
        out = torch.empty_like(ranked)
        out[at] = ranked[:k]
        rest = torch.ones(len(ranked), dtype=torch.bool)
        rest[at] = False
        out[rest] = ranked[k:].flip(0)  # the worst codes first
        ranked = out
    codes = codes[ranked].contiguous()
    got = emu_topk(emu, table, codes, k, False, False, 1, 100 * 1024)
    want = reference.adc_topk(table, codes, k, False, False)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
