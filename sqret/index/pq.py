"""PQIndex: flat product-quantization index (codes scanned with ops.adc_topk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import ops
from ..cluster import train_pq
from .base import as_matrix, check_metric, check_pq, new_ids, remove_mask
from .storage import IndexFile, write_index

_CHUNK = 1 << 20  # codes per streamed chunk when memory-mapped


class PQIndex:
    """Product quantization of d-dim vectors into M sub-spaces of 2**nbits codewords (l2 or ip).

    >>> index = PQIndex(128, 16); index.train(xb); index.add(xb); D, I = index.search(xq, 10)
    """

    kind = "pq"

    def __init__(self, d: int, M: int, nbits: int = 8, metric: str = "l2"):
        self.K = check_pq(d, M, nbits)
        self.d, self.M, self.nbits, self.metric = d, M, nbits, check_metric(metric)
        self.codebooks: torch.Tensor | None = None  # [M, K, d / M]
        self._codes: torch.Tensor | np.ndarray = torch.empty((0, M), dtype=torch.uint8)
        self._ids: torch.Tensor | np.ndarray = torch.empty(0, dtype=torch.int64)
        self._fast: ops.FastScanCodes | None = None
        self.readonly = False

    # ------------------------------------------------------------------ build

    @property
    def is_trained(self) -> bool:
        return self.codebooks is not None

    def train(self, x, *, iters: int = 25, seed: int = 0, progress: bool | None = None) -> PQIndex:
        """Learn the codebooks by k-means on x [n, d]."""
        x = as_matrix(x, self.d, "x")
        self.codebooks = train_pq(x, self.M, self.K, iters=iters, seed=seed, progress=progress)
        return self

    @classmethod
    def from_codebooks(cls, codebooks: torch.Tensor, metric: str = "l2") -> PQIndex:
        """An index over given codebooks [M, K, d/M] (e.g. a trained sqret.nn quantizer's)."""
        M, K, dsub = ops.checks.codebooks(codebooks)
        if K not in (16, 256):
            raise ValueError(f"codebooks must have K = 16 or 256 codewords, got {K}")
        index = cls(M * dsub, M, 4 if K == 16 else 8, metric)
        index.codebooks = codebooks.detach().to(torch.float32).contiguous()
        return index

    @classmethod
    def from_quantizer(cls, quantizer, metric: str | None = None) -> PQIndex:
        """An index over a trained quantizer's codewords (e.g. sqret.nn.ProductQuantizer): its codes are
        searchable here. ``metric`` defaults to the quantizer's ("cos" searches as "ip" on its
        normalised codewords)."""
        codewords = quantizer.codewords() if hasattr(quantizer, "codewords") else quantizer.codebooks
        m = metric or getattr(quantizer, "metric", "l2")
        return cls.from_codebooks(codewords, "ip" if m == "cos" else m)

    def _writable(self) -> None:
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() or from_codebooks() first")
        if self.readonly:
            raise RuntimeError("the index was loaded with mmap=True and is read-only; load it without mmap to edit")

    def add(self, x, ids=None) -> None:
        """Encode and append x [n, d], with int64 ids (default: ntotal, ntotal + 1, ...)."""
        self._writable()
        x = as_matrix(x, self.d, "x")
        self.add_codes(ops.encode(x, self.codebooks), ids)

    def add_codes(self, codes, ids=None) -> None:
        """Append precomputed codes [n, M] (uint8, values < K)."""
        self._writable()
        codes = torch.as_tensor(codes)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        self._codes = torch.cat([self._codes, codes.to(torch.uint8)])
        self._ids = torch.cat([self._ids, new_ids(ids, codes.shape[0], len(self))])
        self._fast = None

    def remove(self, ids) -> int:
        """Remove every entry whose id is in ids; returns how many were removed."""
        self._writable()
        gone = remove_mask(self._ids, ids)
        keep = ~gone
        self._codes, self._ids, self._fast = self._codes[keep], self._ids[keep], None
        return int(gone.sum())

    def reset(self) -> None:
        self._writable()
        self._codes, self._ids, self._fast = self._codes[:0], self._ids[:0], None

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def ntotal(self) -> int:
        return len(self)

    # ------------------------------------------------------------------ query

    def codes(self) -> torch.Tensor:
        """All codes [ntotal, M] uint8 (in memory)."""
        return torch.as_tensor(np.asarray(self._codes)) if isinstance(self._codes, np.ndarray) else self._codes

    def ids(self) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self._ids)) if isinstance(self._ids, np.ndarray) else self._ids

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] of the given ids (KeyError for an unknown id)."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained")
        want = torch.as_tensor(np.asarray(ids)).to(torch.int64).reshape(-1)
        have = self.ids()
        order = torch.argsort(have, stable=True)
        pos = torch.searchsorted(have[order], want).clamp_max(max(len(have) - 1, 0))
        found = have[order][pos] == want if len(have) else torch.zeros_like(want, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return ops.decode(self.codes()[order[pos]], self.codebooks)

    def search(self, queries, k: int, *, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64), best first; -1 / +inf (-inf for ip) past ntotal.

        Asymmetric distance (ADC: exact query to decoded code) by default; ``symmetric=True`` encodes the
        queries too and compares codewords with codewords (SDC, as in the hashing literature)."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() or from_codebooks() first")
        q = as_matrix(queries, self.d, "queries", finite=symmetric)  # ADC: ops.pq_search checks, natively
        k = ops.checks.topk_k(k)
        if isinstance(self._codes, np.ndarray):  # memory-mapped: stream chunks through the scan
            codes = [self._codes[a : a + _CHUNK] for a in range(0, len(self), _CHUNK)] or [self._codes]
        elif self.nbits == 4 and q.is_cpu:
            if self._fast is None:
                self._fast = ops.fastscan_pack(self._codes)
            codes = self._fast
        else:
            codes = self._codes
        if not symmetric:  # tables and scan in one op
            return ops.pq_search(q, self.codebooks, codes, k, self.metric, ids=self._ids, check_finite=True)
        lut = ops.codeword_tables(self.codebooks, self.metric)  # [M, K, K]
        qc = ops.encode(q, self.codebooks, self.metric).long()  # [Q, M]
        lut = lut[torch.arange(self.M)[None, :], qc]  # [Q, M, K]: row q_m of each table
        return ops.adc_topk(lut, codes, k, largest=self.metric == "ip", ids=self._ids)

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict:
        return {"kind": self.kind, "d": self.d, "M": self.M, "nbits": self.nbits, "metric": self.metric,
                "ntotal": len(self)}

    def save(self, path: str | Path) -> None:
        """Write the index atomically (see sqret.index.storage for the format)."""
        if not self.is_trained:
            raise RuntimeError("the index is not trained: nothing to save")
        write_index(path, self._meta(), [("codebooks", self.codebooks.numpy()),
                                         ("codes", np.asarray(self._codes)), ("ids", np.asarray(self._ids))])

    @classmethod
    def _from_file(cls, f: IndexFile) -> PQIndex:
        m = f.meta
        index = cls(m["d"], m["M"], m["nbits"], m["metric"])
        index.codebooks = torch.from_numpy(np.array(f.array("codebooks")))
        codes, ids = f.array("codes"), f.array("ids")
        if codes.shape != (m["ntotal"], m["M"]) or ids.shape != (m["ntotal"],):
            raise ValueError(f"{f.path}: sections do not match the header (ntotal = {m['ntotal']})")
        if f.mmap:
            index._codes, index._ids, index.readonly = codes, ids, True
        else:
            index._codes, index._ids = torch.from_numpy(codes), torch.from_numpy(ids)
        return index
