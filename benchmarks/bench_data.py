"""Benchmark datasets: PQ codebooks + codes + queries, and the same codes loaded into FAISS indexes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from sqret import ops
from sqret.cluster import train_pq


@dataclass
class Coded:
    name: str
    nbits: int
    codebooks: torch.Tensor  # [M, K, d]
    codes: torch.Tensor  # [N, M] uint8
    queries: torch.Tensor  # [Qmax, D]

    @property
    def N(self) -> int:
        return self.codes.shape[0]

    @functools.cached_property
    def fastscan(self) -> ops.FastScanCodes:
        return ops.fastscan_pack(self.codes)

    @functools.cached_property
    def faiss_index(self):
        """IndexPQ (8-bit) or IndexPQFastScan (4-bit) holding exactly these codebooks and codes."""
        import faiss

        M, K, d = self.codebooks.shape
        D = M * d
        if self.nbits == 8:
            index = faiss.IndexPQ(D, M, 8)
            faiss.copy_array_to_vector(self.codebooks.numpy().ravel(), index.pq.centroids)
            index.is_trained = True
            index.add_sa_codes(np.ascontiguousarray(self.codes.numpy()))
            return index
        index = faiss.IndexPQFastScan(D, M, 4)
        faiss.copy_array_to_vector(self.codebooks.numpy().ravel(), index.pq.centroids)
        index.is_trained = True
        step = 1 << 20
        for a in range(0, self.N, step):  # decoded codewords re-encode to the same codes
            index.add(ops.decode(self.codes[a : a + step], self.codebooks).numpy())
        sample = ops.decode(self.codes[:1000], self.codebooks).numpy()
        assert np.array_equal(index.pq.compute_codes(sample), ops.pack4(self.codes[:1000]).numpy())
        return index


def synthetic(N: int, nbits: int, M: int = 16, D: int = 64, Q: int = 1000, seed: int = 0) -> Coded:
    g = torch.Generator().manual_seed(seed)
    K = 1 << nbits
    C = torch.randn(M, K, D // M, generator=g)
    codes = torch.randint(0, K, (N, M), generator=g, dtype=torch.uint8)
    return Coded(f"synthetic{N // 1_000_000}M", nbits, C, codes, torch.randn(Q, D, generator=g))


def siftsmall(data_dir, nbits: int, M: int = 16) -> Coded:
    from sqret.data import read_fvecs

    base = torch.from_numpy(read_fvecs(data_dir / "siftsmall" / "siftsmall_base.fvecs"))
    q = torch.from_numpy(read_fvecs(data_dir / "siftsmall" / "siftsmall_query.fvecs"))
    C = train_pq(base, M, 1 << nbits, iters=10, progress=False)
    queries = q.repeat(10, 1)  # 1,000 queries: the 100 real ones, ten times
    return Coded("siftsmall", nbits, C, ops.encode(base, C), queries)
