"""IVFPQIndex: coarse k-means centroids, inverted lists, product quantization of the residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import ops
from ..cluster import train_pq
from .base import as_matrix, check_metric, check_pq, new_ids, remove_mask
from .storage import IndexFile, IndexWriter


class IVFPQIndex:
    """Inverted-file index with PQ-encoded residuals (as FAISS IndexIVFPQ, by_residual=True).

    ``search(q, k, nprobe)`` scans the nprobe lists whose centroids are nearest to each query; for l2 the
    LUT is built on the residual query q - c_l, for ip the score is <q, c_l> + LUT(q).
    """

    kind = "ivfpq"

    def __init__(self, d: int, nlist: int, M: int, nbits: int = 8, metric: str = "l2"):
        self.K = check_pq(d, M, nbits)
        if not isinstance(nlist, int) or nlist < 1:
            raise ValueError(f"nlist must be a positive int, got {nlist!r}")
        self.d, self.nlist, self.M, self.nbits, self.metric = d, nlist, M, nbits, check_metric(metric)
        self.centroids: torch.Tensor | None = None  # [nlist, d]
        self.codebooks: torch.Tensor | None = None  # [M, K, d / M]
        self._codes: list[torch.Tensor | np.ndarray] = [torch.empty((0, M), dtype=torch.uint8)] * nlist
        self._ids: list[torch.Tensor | np.ndarray] = [torch.empty(0, dtype=torch.int64)] * nlist
        self.readonly = False
        self._addr = None  # cached list addresses (see _addresses)
        self._table = None  # cached l2 precomputed table (see _precomputed)
        self._cnorm = None  # cached squared centroid norms (see probe)

    # ------------------------------------------------------------------ build

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None and self.codebooks is not None

    def train(self, x, *, iters: int = 25, seed: int = 0, progress: bool | None = None) -> IVFPQIndex:
        """Coarse k-means (nlist centroids), then PQ codebooks on the residuals of x [n, d]."""
        x = as_matrix(x, self.d, "x")
        if x.shape[0] < self.nlist:
            raise ValueError(f"training needs at least nlist = {self.nlist} vectors, got {x.shape[0]}")
        self.centroids = train_pq(x, 1, self.nlist, iters=iters, seed=seed, progress=progress)[0]
        residuals = x - self.centroids[self.assign(x)]
        self.codebooks = train_pq(residuals, self.M, self.K, iters=iters, seed=seed, progress=progress)
        self._table = self._cnorm = None
        return self

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest list of each vector of x [n, d] -> int64 [n]."""
        return ops.encode(x, self.centroids[None], self.metric).long()[:, 0]

    def _writable(self) -> None:
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() first")
        if self.readonly:
            raise RuntimeError("the index was loaded with mmap=True and is read-only; load it without mmap to edit")

    def add(self, x, ids=None) -> None:
        """Assign x [n, d] to lists, PQ-encode the residuals, append with int64 ids (default ntotal, ...)."""
        self._writable()
        x = as_matrix(x, self.d, "x")
        lists = self.assign(x)
        self.add_preassigned(lists, ops.encode(x - self.centroids[lists], self.codebooks), ids)

    def add_preassigned(self, lists, codes, ids=None) -> None:
        """Append codes [n, M] of residuals to the given lists [n]."""
        self._writable()
        codes, lists = torch.as_tensor(codes), torch.as_tensor(lists).to(torch.int64)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        if lists.shape != (codes.shape[0],) or (lists.numel() and (lists.min() < 0 or lists.max() >= self.nlist)):
            raise ValueError(f"lists must be [n = {codes.shape[0]}] ints in [0, nlist = {self.nlist})")
        ids = new_ids(ids, codes.shape[0], len(self))
        order = torch.argsort(lists, stable=True)
        ls, counts = torch.unique_consecutive(lists[order], return_counts=True)
        for li, part in zip(ls.tolist(), torch.split(order, counts.tolist()), strict=True):
            self._codes[li] = torch.cat([self._codes[li], codes[part].to(torch.uint8)])
            self._ids[li] = torch.cat([self._ids[li], ids[part]])
        self._addr = None

    def remove(self, ids) -> int:
        """Remove every entry whose id is in ids; returns how many were removed."""
        self._writable()
        removed = 0
        for li in range(self.nlist):
            gone = remove_mask(self._ids[li], ids)
            if gone.any():
                removed += int(gone.sum())
                self._codes[li], self._ids[li] = self._codes[li][~gone], self._ids[li][~gone]
        self._addr = None
        return removed

    def __len__(self) -> int:
        return sum(int(i.shape[0]) for i in self._ids)

    @property
    def ntotal(self) -> int:
        return len(self)

    def list_sizes(self) -> list[int]:
        return [int(i.shape[0]) for i in self._ids]

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] (centroid + residual) of the given ids (KeyError for an unknown id)."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained")
        want = torch.as_tensor(np.asarray(ids)).to(torch.int64).reshape(-1)
        out = torch.empty((want.shape[0], self.d))
        found = torch.zeros(want.shape[0], dtype=torch.bool)
        for li in range(self.nlist):
            lid = torch.as_tensor(np.asarray(self._ids[li]))
            hit = torch.isin(want, lid) & ~found
            if hit.any():
                pos = (lid.unsqueeze(0) == want[hit].unsqueeze(1)).int().argmax(1)
                codes = torch.as_tensor(np.asarray(self._codes[li]))[pos]
                out[hit] = self.centroids[li] + ops.decode(codes, self.codebooks)
                found |= hit
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return out

    # ------------------------------------------------------------------ query

    def search(self, queries, k: int, nprobe: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64) over the nprobe nearest lists, best first."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() first")
        q = as_matrix(queries, self.d, "queries")
        k = ops.checks.topk_k(k)
        if not isinstance(nprobe, int) or nprobe < 1:
            raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
        nprobe = min(nprobe, self.nlist)
        probes = self.probe(q, nprobe)
        return ops.ivf_search(q, self.centroids, self.codebooks, self._codes, self._ids, probes, k, self.metric,
                              addresses=self._addresses(), precomputed=self._precomputed())

    PRECOMPUTED_MAX_BYTES = 256 << 20

    def _precomputed(self) -> torch.Tensor | None:
        """The l2 precomputed table [nlist, M, K] (cached), unless it would exceed PRECOMPUTED_MAX_BYTES."""
        if self.metric != "l2" or self.nlist * self.M * self.K * 4 > self.PRECOMPUTED_MAX_BYTES:
            return None
        if self._table is None:
            self._table = ops.ivf_precomputed_table(self.centroids, self.codebooks)
        return self._table

    def probe(self, q: torch.Tensor, nprobe: int) -> torch.Tensor:
        """The nprobe lists nearest each query of q [Q, d], nearest first -> int64 [Q, nprobe]."""
        if self._cnorm is None:
            self._cnorm = (self.centroids * self.centroids).sum(1)
        dots = q @ self.centroids.T  # one GEMM; l2 ranks by ||c||^2 - 2 q.c (||q||^2 is common)
        if self.metric == "ip":
            return dots.topk(nprobe, dim=1).indices
        return (self._cnorm - 2 * dots).topk(nprobe, dim=1, largest=False).indices

    def _addresses(self):
        """Buffer addresses of the lists for the native scan, cached until the lists change."""
        if self._addr is None and ops.get_backend() in ("auto", "cpu_native") and self._native():
            from ..ops.cpu_native import list_addresses

            self._addr = list_addresses(self._codes, self._ids)
        return self._addr

    @staticmethod
    def _native() -> bool:
        return any(b.name == "cpu_native" and b.available for b in ops.backends())

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict:
        return {"kind": self.kind, "d": self.d, "nlist": self.nlist, "M": self.M, "nbits": self.nbits,
                "metric": self.metric, "ntotal": len(self)}

    def save(self, path: str | Path, progress: bool | None = None) -> None:
        """Write the index atomically: lists are streamed one after the other (list-major codes + ids)."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained: nothing to save")
        sizes = np.array(self.list_sizes(), dtype=np.int64)
        with IndexWriter(path, self._meta()) as w:
            w.add("centroids", self.centroids.numpy())
            w.add("codebooks", self.codebooks.numpy())
            w.add("list_offsets", np.concatenate([[0], np.cumsum(sizes)]))
            for name, parts in (("codes", self._codes), ("ids", self._ids)):
                w.begin(name, np.uint8 if name == "codes" else np.int64, (self.M,) if name == "codes" else ())
                quiet = None if progress is None else not progress
                for part in tqdm(parts, desc=f"saving {name}", disable=quiet, leave=False):
                    w.extend(name, np.asarray(part))

    @classmethod
    def _from_file(cls, f: IndexFile) -> IVFPQIndex:
        m = f.meta
        index = cls(m["d"], m["nlist"], m["M"], m["nbits"], m["metric"])
        index.centroids = torch.from_numpy(np.array(f.array("centroids")))
        index.codebooks = torch.from_numpy(np.array(f.array("codebooks")))
        offsets = np.array(f.array("list_offsets"))
        codes, ids = f.array("codes"), f.array("ids")
        if (offsets.shape != (m["nlist"] + 1,) or offsets[-1] != m["ntotal"] or np.any(np.diff(offsets) < 0)
                or codes.shape != (m["ntotal"], m["M"]) or ids.shape != (m["ntotal"],)):
            raise ValueError(f"{f.path}: sections do not match the header (ntotal = {m['ntotal']})")
        wrap = (lambda a: a) if f.mmap else torch.from_numpy
        index._codes = [wrap(codes[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        index._ids = [wrap(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        index.readonly = f.mmap
        return index
