"""ADC scan + top-k on the CPU: sqret (cpu_native) against FAISS IndexPQ (8-bit) and IndexPQFastScan (4-bit).

Same codebooks and codes in both, same k and threads, queries from raw vectors in both (our time includes
building the LUT: ops.pq_search). Run: make bench  (results: python benchmarks/report.py)."""

import functools
import time

import pytest
import torch
from bench_data import siftsmall, synthetic
from conftest import REPEATS

from sqret import ops

K_NN = 10
DATASETS = ["siftsmall", "synthetic1M", "synthetic10M"]
QUERIES = [1, 16, 1000]


@functools.cache
def dataset(name: str, nbits: int):
    from conftest import DATA

    if name == "siftsmall":
        if not DATA.is_dir():
            pytest.skip(f"real data not found at {DATA}")
        return siftsmall(DATA, nbits)
    return synthetic(int(name.removeprefix("synthetic").removesuffix("M")) * 1_000_000, nbits)


def _rounds(N: int, Q: int) -> int:
    """Rounds for about a few tenths of a second per case (3 at least): this VM's CPUs slow down by up to
    1.6x for stretches of milliseconds, and a median over the ten milliseconds of a short case could fall in
    one, for either library."""
    return max(3, min(20_000, int(3e8 / max(1, N * Q))))  # short cases also run in REPEATS windows


def _quiet():
    """Let the other library's OpenMP threads stop spinning (FAISS and torch / sqret each have their own
    runtime, whose idle threads spin for milliseconds after a parallel call) before timing."""
    time.sleep(0.05)


def _search_sqret(data, q, k):
    codes = data.fastscan if data.nbits == 4 else data.codes
    return ops.pq_search(q, data.codebooks, codes, k)  # tables + scan, like faiss's search


def _search_faiss(data, q, k):
    return data.faiss_index.search(q.numpy(), k)


@pytest.mark.parametrize("system", ["faiss", "sqret"])
@pytest.mark.parametrize("rep", range(REPEATS))
@pytest.mark.parametrize("Q", QUERIES)
@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("name", DATASETS)
def test_adc_scan(benchmark, name, nbits, Q, rep, system):
    data = dataset(name, nbits)
    if rep and data.N * Q > 2e7:
        pytest.skip("one window is enough for a case this long")
    q = data.queries[:Q].contiguous()
    fn = _search_sqret if system == "sqret" else _search_faiss
    _ = data.faiss_index if system == "faiss" else data.fastscan if nbits == 4 else None  # build untimed
    benchmark.group = f"{name} {nbits}-bit Q={Q} k={K_NN}"
    benchmark.extra_info.update(N=data.N, M=data.codebooks.shape[0], Q=Q, k=K_NN, nbits=nbits, system=system,
                                threads=torch.get_num_threads(), rep=rep)
    _quiet()
    benchmark.pedantic(fn, args=(data, q, K_NN), rounds=_rounds(data.N, Q), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("system", ["faiss", "sqret"])
@pytest.mark.parametrize("rep", range(REPEATS))
@pytest.mark.parametrize("nbits", [8, 4])
def test_adc_scan_k100(benchmark, nbits, rep, system):
    data = dataset("synthetic1M", nbits)
    q = data.queries[:16].contiguous()
    fn = _search_sqret if system == "sqret" else _search_faiss
    benchmark.group = f"synthetic1M {nbits}-bit Q=16 k=100"
    benchmark.extra_info.update(N=data.N, M=data.codebooks.shape[0], Q=16, k=100, nbits=nbits, system=system,
                                threads=torch.get_num_threads(), rep=rep)
    _quiet()
    benchmark.pedantic(fn, args=(data, q, 100), rounds=_rounds(data.N, 16), iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("system", ["faiss", "sqret_native", "sqret_reference"])
def test_encode(benchmark, system):
    """PQ encoding of 100k vectors (M=16, K=256): FAISS compute_codes vs our encode."""
    import sqret

    data = dataset("synthetic1M", 8)
    x = ops.decode(data.codes[:100_000], data.codebooks) + 0.1 * torch.randn(100_000, 64)
    benchmark.group = "encode 100k x 64-d, M=16 K=256"
    benchmark.extra_info.update(system=system, threads=torch.get_num_threads())
    if system == "faiss":
        pq = data.faiss_index.pq
        benchmark.pedantic(pq.compute_codes, args=(x.numpy(),), rounds=5, iterations=1, warmup_rounds=1)
        return
    with sqret.use_backend("cpu_native" if system == "sqret_native" else "reference"):
        benchmark.pedantic(ops.encode, args=(x, data.codebooks), rounds=5, iterations=1, warmup_rounds=1)
