"""IVF-PQ search of the small real sets, sqret beside FAISS in one process: best of 9 x 300 searches each,
so that neither library is timed while the other's threads still run (sub-millisecond searches).

python benchmarks/ivf_small.py [--nprobe 1 4 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from sqret.data import read_vectors
from sqret.index import IVFPQIndex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def best_us(fn, n: int = 300) -> float:
    fn()
    best = float("inf")
    for _ in range(9):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nprobe", nargs="+", type=int, default=[1, 4, 16])
    args = p.parse_args()
    sets = {"siftsmall": ("siftsmall/siftsmall_base.fvecs", "siftsmall/siftsmall_query.fvecs"),
            "bigann10k": ("bigann10k/bigann10k_base.bvecs", "bigann10k/bigann10k_query.bvecs")}
    for name, (base, query) in sets.items():
        xb = torch.from_numpy(np.asarray(read_vectors(DATA / base), dtype=np.float32))
        xq = torch.from_numpy(np.asarray(read_vectors(DATA / query), dtype=np.float32))[:100]
        ours = IVFPQIndex(128, 64, 16, 8)
        ours.train(xb, progress=False)
        ours.add(xb)
        theirs = faiss.IndexIVFPQ(faiss.IndexFlatL2(128), 128, 64, 16, 8)
        theirs.train(xb.numpy())
        theirs.add(xb.numpy())
        for nprobe in args.nprobe:
            theirs.nprobe = nprobe
            a = best_us(lambda: ours.search(xq, 100, nprobe=nprobe))  # noqa: B023
            b = best_us(lambda: theirs.search(xq.numpy(), 100))  # noqa: B023
            print(f"{name} nprobe={nprobe}: sqret {a:.0f} us, faiss {b:.0f} us per 100 queries: {b / a:.2f}x")


if __name__ == "__main__":
    main()
