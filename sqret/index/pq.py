"""PQIndex: flat product-quantization index (codes scanned with ops.pq_search / ops.adc_topk)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import ops
from ..cluster import train_pq
from .base import (
    Index,
    as_ids,
    as_matrix,
    check_codebooks,
    check_flag,
    check_k,
    check_metric,
    check_pq,
    finite_section,
    meta_pq,
    new_ids,
    verified_codes,
    verified_ids,
)
from .storage import IndexFile, Meta

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


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a


class PQIndex(Index):
    """Product quantization of d-dim vectors into M sub-spaces of 2**nbits codewords (l2 or ip). 4-bit codes
    are scanned with the fast scan on the CPU, scored ``exact``-ly (every candidate that can enter the top-k
    re-ranked with float tables) or by their quantized distances (``exact=False``, as FAISS IndexPQFastScan).

    >>> index = PQIndex(128, 16); index.train(xb); index.add(xb); D, I = index.search(xq, 10)

    Thread-safe: searches run concurrently with each other and with add / remove / save (see
    :mod:`sqret.index.base`).
    """

    kind = "pq"

    def __init__(self, d: int, M: int, nbits: int = 8, metric: str = "l2", *, exact: bool = True):
        self.K = check_pq(d, M, nbits)
        self.d, self.M, self.nbits, self.metric = int(d), int(M), int(nbits), check_metric(metric)
        self.exact = check_flag(exact, "exact")
        self._init_index()
        self._state = _State(None, torch.empty((0, M), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))

    # ------------------------------------------------------------------ state functions

    def _count(self, s: _State) -> int:
        return int(s.ids.shape[0])

    def _trained(self, s: _State) -> bool:
        return s.codebooks is not None

    def _sources(self, s: _State) -> list:
        return [s.source] if s.source is not None else []

    def _train(self, x: torch.Tensor, *, iters: int, seed: int, progress) -> _State:
        if x.shape[0] < 1:
            raise ValueError("training needs at least one vector")
        return _State(train_pq(x, self.M, self.K, iters=iters, seed=seed, progress=progress), self._state.codes[:0],
                      self._state.ids[:0])

    def _add_to(self, s: _State, x: torch.Tensor, ids) -> _State:
        return self._appended(s, ops.encode(x, s.codebooks), ids)

    def _appended(self, s: _State, codes: torch.Tensor, ids) -> _State:
        new = new_ids(ids, codes.shape[0], self._count(s))
        return _State(s.codebooks, torch.cat([_tensor(s.codes), codes.to("cpu", torch.uint8)]),
                      torch.cat([_tensor(s.ids), new]))

    def _remove_from(self, s: _State, ids: torch.Tensor) -> tuple[_State, int]:
        have = _tensor(s.ids)
        gone = torch.isin(have, ids)
        n = int(gone.sum())
        if not n:
            return s, 0
        return _State(s.codebooks, _tensor(s.codes)[~gone], have[~gone]), n

    def _emptied(self, s: _State) -> _State:
        return _State(s.codebooks, torch.empty((0, self.M), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))

    def _search_in(self, s: _State, q: torch.Tensor, k: int, *, symmetric: bool = False,
                   exact: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        exact = self.exact if exact is None else check_flag(exact, "exact")
        if symmetric:
            ops.checks.finite(q, "queries")
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
            return ops.pq_search(q, s.codebooks, codes, k, self.metric, ids=s.ids, check_finite=True, exact=exact)
        lut = ops.codeword_tables(s.codebooks, self.metric)  # [M, K, K]
        qc = ops.encode(q, s.codebooks, self.metric).long()  # [Q, M]
        lut = lut[torch.arange(self.M)[None, :], qc]  # [Q, M, K]: row q_m of each table
        return ops.adc_topk(lut, codes, k, largest=self.metric == "ip", ids=s.ids, exact=exact)

    # ------------------------------------------------------------------ build

    @property
    def codebooks(self) -> torch.Tensor | None:
        return self._state.codebooks

    @codebooks.setter
    def codebooks(self, value: torch.Tensor) -> None:
        self._editable()
        c = check_codebooks(value, self.M, self.K, self.d // self.M)
        with self._lock:
            self._require_empty("replace the codebooks of")
            self._set_state(_State(c, self._state.codes, self._state.ids))

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

    def _tune(self, x: torch.Tensor, options: dict) -> dict:
        from .tune import tune_codebooks

        C, report = tune_codebooks(self._state.codebooks, x, self.metric, **options)
        self.codebooks = C
        return report

    def add_codes(self, codes, ids=None) -> None:
        """Append precomputed codes [n, M] (values < K) with ids as :meth:`add`. Nothing changes when it raises."""
        self._editable()
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() or from_codebooks() first")
        codes = torch.as_tensor(codes)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        given = None if ids is None else new_ids(ids, codes.shape[0], 0)
        with self._lock:
            self._set_state(self._appended(self._state, codes, given))

    # ------------------------------------------------------------------ query

    def codes(self) -> torch.Tensor:
        """All codes [ntotal, M] uint8 (in memory)."""
        return _tensor(self._state.codes)

    def ids(self) -> torch.Tensor:
        return _tensor(self._state.ids)

    def search_parameters(self) -> tuple[str, ...]:
        return ("exact", "symmetric")

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] of the given ids (KeyError for an unknown id)."""
        s = self._ready()
        want = as_ids(ids).reshape(-1)
        have, codes = _tensor(s.ids), _tensor(s.codes)
        order = torch.argsort(have, stable=True)
        pos = torch.searchsorted(have[order], want).clamp_max(max(len(have) - 1, 0))
        found = have[order][pos] == want if len(have) else torch.zeros_like(want, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return ops.decode(codes[order[pos]], s.codebooks)

    def search(self, queries, k: int, *, symmetric: bool = False, exact: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64), best first; -1 / +inf (-inf for ip) past ntotal.

        Asymmetric distance (ADC: exact query to decoded code) by default; ``symmetric=True`` encodes the
        queries too and compares codewords with codewords (SDC, as in the hashing literature). ``exact``
        (default: the index's) as in the class docstring."""
        s = self._ready()  # base.search's steps, without its keyword forwarding: one query takes microseconds
        if type(queries) is not torch.Tensor or queries.dtype is not torch.float32:  # else the ops check the shape
            queries = as_matrix(queries, self.d, "queries", finite=False)
        return self._search_in(s, queries, check_k(k), symmetric=symmetric, exact=exact)

    # ------------------------------------------------------------------ persistence

    def _meta(self, s: _State) -> dict:
        return {"kind": self.kind, "d": self.d, "M": self.M, "nbits": self.nbits, "metric": self.metric,
                "ntotal": self._count(s), "exact": self.exact}

    def _write(self, s: _State, w, prefix: str, progress) -> None:
        w.add(prefix + "codebooks", s.codebooks.numpy())
        w.add(prefix + "codes", np.asarray(s.codes))
        w.add(prefix + "ids", np.asarray(s.ids))

    @classmethod
    def _schema(cls, f: IndexFile, meta: Meta, prefix: str) -> dict:
        d, M, nbits, _, ntotal = meta_pq(f, meta)
        return {prefix + "codebooks": ("<f4", (M, 1 << nbits, d // M)), prefix + "codes": ("u1", (ntotal, M)),
                prefix + "ids": ("<i8", (ntotal,))}

    @classmethod
    def _read(cls, f: IndexFile, meta: Meta, prefix: str) -> PQIndex:
        d, M, nbits, metric, _ = meta_pq(f, meta)
        index = cls(d, M, nbits, metric, exact=meta.flag("exact", default=True))
        codebooks = finite_section(f, f.array(prefix + "codebooks"), prefix + "codebooks")
        codes, ids = f.array(prefix + "codes"), f.array(prefix + "ids")
        verified_codes(f, codes, 1 << nbits, prefix + "codes")
        verified_ids(f, ids, prefix + "ids")
        if f.mmap:
            index._state, index.readonly = _State(codebooks, codes, ids, f), True
        else:
            index._state = _State(codebooks, torch.from_numpy(codes), torch.from_numpy(ids))
        return index

