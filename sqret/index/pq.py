"""PQIndex: flat product-quantization index (codes scanned with ops.pq_search / ops.adc_topk)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import ops
from ..cluster import train_pq
from .base import (
    as_ids,
    as_matrix,
    check_codebooks,
    check_k,
    check_metric,
    check_pq,
    finite_section,
    meta_pq,
    new_ids,
    remove_mask,
    verified_codes,
    verified_ids,
)
from .storage import IndexFile, write_index

_CHUNK = 1 << 20  # codes per streamed chunk when memory-mapped


@dataclass(frozen=True, eq=False)
class _State:
    """One searchable state (see sqret.index.base on thread safety). ``cache`` holds what searches derive
    from it (the fast-scan layout of the codes), computed at most once per state (racing searches may both
    compute it: the results are equal)."""

    codebooks: torch.Tensor | None  # [M, K, d / M] float32
    codes: torch.Tensor | np.ndarray  # [n, M] uint8
    ids: torch.Tensor | np.ndarray  # [n] int64
    source: IndexFile | None = None  # the memory-mapped file the arrays map, checked before each scan
    cache: dict = field(default_factory=dict)


class PQIndex:
    """Product quantization of d-dim vectors into M sub-spaces of 2**nbits codewords (l2 or ip).

    >>> index = PQIndex(128, 16); index.train(xb); index.add(xb); D, I = index.search(xq, 10)

    Thread-safe: searches run concurrently with each other and with add / remove / save (see
    :mod:`sqret.index.base`).
    """

    kind = "pq"

    def __init__(self, d: int, M: int, nbits: int = 8, metric: str = "l2"):
        self.K = check_pq(d, M, nbits)
        self.d, self.M, self.nbits, self.metric = int(d), int(M), int(nbits), check_metric(metric)
        self._lock = threading.Lock()  # writers only
        self._state = _State(None, torch.empty((0, M), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
        self.readonly = False

    # ------------------------------------------------------------------ build

    @property
    def is_trained(self) -> bool:
        return self._state.codebooks is not None

    @property
    def codebooks(self) -> torch.Tensor | None:
        return self._state.codebooks

    @codebooks.setter
    def codebooks(self, value: torch.Tensor) -> None:
        self._editable()
        c = check_codebooks(value, self.M, self.K, self.d // self.M)
        with self._lock:
            self._require_empty("replace the codebooks")
            self._state = _State(c, self._state.codes, self._state.ids)

    def _require_empty(self, what: str) -> None:
        if len(self._state.ids):
            raise RuntimeError(f"cannot {what} of an index that holds {len(self._state.ids)} codes encoded with the "
                               "current ones: reset() it first, or build a new index")

    def train(self, x, *, iters: int = 25, seed: int = 0, progress: bool | None = None) -> PQIndex:
        """Learn the codebooks by k-means on x [n, d] (the index must be empty)."""
        self._require_empty("train the codebooks")
        self._editable()
        x = as_matrix(x, self.d, "x")
        if x.shape[0] < 1:
            raise ValueError("training needs at least one vector")
        self.codebooks = train_pq(x, self.M, self.K, iters=iters, seed=seed, progress=progress)
        return self

    @classmethod
    def from_codebooks(cls, codebooks: torch.Tensor, metric: str = "l2") -> PQIndex:
        """An index over given codebooks [M, K, d/M] (e.g. a trained sqret.nn quantizer's)."""
        M, K, dsub = ops.checks.codebooks(codebooks)
        if K not in (16, 256):
            raise ValueError(f"codebooks must have K = 16 or 256 codewords, got {K}")
        index = cls(M * dsub, M, 4 if K == 16 else 8, metric)
        index.codebooks = codebooks
        return index

    @classmethod
    def from_quantizer(cls, quantizer, metric: str | None = None) -> PQIndex:
        """An index over a trained quantizer's codewords (e.g. sqret.nn.ProductQuantizer): its codes are
        searchable here. ``metric`` defaults to the quantizer's ("cos" searches as "ip" on its
        normalised codewords)."""
        codewords = quantizer.codewords() if hasattr(quantizer, "codewords") else quantizer.codebooks
        m = metric or getattr(quantizer, "metric", "l2")
        return cls.from_codebooks(codewords, "ip" if m == "cos" else m)

    def _editable(self) -> None:
        if self.readonly:
            raise RuntimeError("the index was loaded with mmap=True and is read-only; load it without mmap to edit")

    def _writable(self) -> _State:
        self._editable()
        s = self._state
        if s.codebooks is None:
            raise RuntimeError("the index is not trained: call train() or from_codebooks() first")
        return s

    def add(self, x, ids=None) -> None:
        """Encode and append x [n, d], with int64 ids >= 0 (default: ntotal, ntotal + 1, ...). Nothing changes
        when it raises."""
        s = self._writable()
        x = as_matrix(x, self.d, "x")
        if ids is not None:
            new_ids(ids, x.shape[0], 0)  # check the ids before the encoding work
        self._append(ops.encode(x, s.codebooks), ids, s.codebooks)

    def add_codes(self, codes, ids=None) -> None:
        """Append precomputed codes [n, M] (values < K) with ids as :meth:`add`. Nothing changes when it raises."""
        s = self._writable()
        codes = torch.as_tensor(codes)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        self._append(codes, ids, s.codebooks)

    def _append(self, codes: torch.Tensor, ids, codebooks: torch.Tensor) -> None:
        codes = codes.to("cpu", torch.uint8)
        with self._lock:
            s = self._state
            if s.codebooks is not codebooks:
                raise RuntimeError("the codebooks changed while these codes were computed")
            new = new_ids(ids, codes.shape[0], len(s.ids))
            self._state = _State(s.codebooks, torch.cat([s.codes, codes]), torch.cat([s.ids, new]))

    def remove(self, ids) -> int:
        """Remove every entry whose id is in ids; returns how many were removed."""
        self._writable()
        with self._lock:
            s = self._state
            gone = remove_mask(s.ids, ids)
            n = int(gone.sum())
            if n:
                keep = ~gone
                self._state = _State(s.codebooks, s.codes[keep], s.ids[keep])
            return n

    def reset(self) -> None:
        """Remove every entry (the codebooks stay)."""
        self._editable()
        with self._lock:
            s = self._state
            self._state = _State(s.codebooks, s.codes[:0], s.ids[:0])

    def __len__(self) -> int:
        return int(self._state.ids.shape[0])

    @property
    def ntotal(self) -> int:
        return len(self)

    # ------------------------------------------------------------------ query

    def codes(self) -> torch.Tensor:
        """All codes [ntotal, M] uint8 (in memory)."""
        c = self._state.codes
        return torch.as_tensor(np.asarray(c)) if isinstance(c, np.ndarray) else c

    def ids(self) -> torch.Tensor:
        i = self._state.ids
        return torch.as_tensor(np.asarray(i)) if isinstance(i, np.ndarray) else i

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] of the given ids (KeyError for an unknown id)."""
        s = self._state
        if s.codebooks is None:
            raise RuntimeError("the index is not trained")
        if s.source is not None:
            s.source.check_unchanged()
        want = as_ids(ids).reshape(-1)
        have = torch.as_tensor(np.asarray(s.ids)) if isinstance(s.ids, np.ndarray) else s.ids
        codes = torch.as_tensor(np.asarray(s.codes)) if isinstance(s.codes, np.ndarray) else s.codes
        order = torch.argsort(have, stable=True)
        pos = torch.searchsorted(have[order], want).clamp_max(max(len(have) - 1, 0))
        found = have[order][pos] == want if len(have) else torch.zeros_like(want, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return ops.decode(codes[order[pos]], s.codebooks)

    def search(self, queries, k: int, *, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64), best first; -1 / +inf (-inf for ip) past ntotal.

        Asymmetric distance (ADC: exact query to decoded code) by default; ``symmetric=True`` encodes the
        queries too and compares codewords with codewords (SDC, as in the hashing literature)."""
        s = self._state  # one consistent state for the whole search
        if s.codebooks is None:
            raise RuntimeError("the index is not trained: call train() or from_codebooks() first")
        q = as_matrix(queries, self.d, "queries", finite=symmetric)  # ADC: ops.pq_search checks, natively
        k = check_k(k)
        if s.source is not None:
            s.source.check_unchanged()
        if isinstance(s.codes, np.ndarray):  # memory-mapped: stream chunks through the scan
            n = s.codes.shape[0]
            codes = [s.codes[a : a + _CHUNK] for a in range(0, n, _CHUNK)] or [s.codes]
        elif self.nbits == 4 and q.is_cpu:
            codes = s.cache.get("fast")
            if codes is None:
                codes = s.cache["fast"] = ops.fastscan_pack(s.codes)
        else:
            codes = s.codes
        if not symmetric:  # tables and scan in one op
            return ops.pq_search(q, s.codebooks, codes, k, self.metric, ids=s.ids, check_finite=True)
        lut = ops.codeword_tables(s.codebooks, self.metric)  # [M, K, K]
        qc = ops.encode(q, s.codebooks, self.metric).long()  # [Q, M]
        lut = lut[torch.arange(self.M)[None, :], qc]  # [Q, M, K]: row q_m of each table
        return ops.adc_topk(lut, codes, k, largest=self.metric == "ip", ids=s.ids)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Write the index atomically (see sqret.index.storage for the format); safe while other threads
        search or mutate (it writes one state)."""
        s = self._state
        if s.codebooks is None:
            raise RuntimeError("the index is not trained: nothing to save")
        if s.source is not None:
            s.source.check_unchanged()
        meta = {"kind": self.kind, "d": self.d, "M": self.M, "nbits": self.nbits, "metric": self.metric,
                "ntotal": int(s.ids.shape[0])}
        write_index(path, meta, [("codebooks", s.codebooks.numpy()), ("codes", np.asarray(s.codes)),
                                 ("ids", np.asarray(s.ids))])

    @classmethod
    def _from_file(cls, f: IndexFile) -> PQIndex:
        d, M, nbits, metric, ntotal = meta_pq(f)
        K = 1 << nbits
        f.expect({"codebooks": ("<f4", (M, K, d // M)), "codes": ("u1", (ntotal, M)), "ids": ("<i8", (ntotal,))})
        index = cls(d, M, nbits, metric)
        codebooks = finite_section(f, f.array("codebooks"), "codebooks")
        codes, ids = f.array("codes"), f.array("ids")
        verified_codes(f, codes, K)
        verified_ids(f, ids)
        if f.mmap:
            index._state, index.readonly = _State(codebooks, codes, ids, f), True
        else:
            index._state = _State(codebooks, torch.from_numpy(codes), torch.from_numpy(ids))
        return index

