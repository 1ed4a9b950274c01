"""IVFPQIndex: coarse k-means centroids, inverted lists, product quantization of the residuals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

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
from .storage import IndexFile, IndexFileError, IndexWriter


@dataclass(frozen=True, eq=False)
class _State:
    """One searchable state (see sqret.index.base on thread safety); ``cache`` holds what searches derive
    from the centroids and codebooks (the l2 precomputed table, the centroid norms)."""

    centroids: torch.Tensor | None  # [nlist, d] float32
    codebooks: torch.Tensor | None  # [M, K, d / M] float32
    lists: ops.InvertedLists
    source: IndexFile | None = None  # the memory-mapped file the lists map, checked before each scan
    cache: dict = field(default_factory=dict)


class IVFPQIndex:
    """Inverted-file index with PQ-encoded residuals (as FAISS IndexIVFPQ, by_residual=True).

    ``search(q, k, nprobe)`` scans the nprobe lists whose centroids are nearest to each query; for l2 the
    LUT is built on the residual query q - c_l, for ip the score is <q, c_l> + LUT(q).
    Thread-safe: searches run concurrently with each other and with add / remove / save (see
    :mod:`sqret.index.base`).
    """

    kind = "ivfpq"

    def __init__(self, d: int, nlist: int, M: int, nbits: int = 8, metric: str = "l2"):
        self.K = check_pq(d, M, nbits)
        if not isinstance(nlist, (int, np.integer)) or isinstance(nlist, bool) or nlist < 1:
            raise ValueError(f"nlist must be a positive int, got {nlist!r}")
        self.d, self.nlist, self.M, self.nbits = int(d), int(nlist), int(M), int(nbits)
        self.metric = check_metric(metric)
        self._lock = threading.Lock()  # writers only
        self._state = _State(None, None, ops.InvertedLists.empty(self.nlist, self.M, self.K))
        self.readonly = False

    # ------------------------------------------------------------------ build

    @property
    def is_trained(self) -> bool:
        s = self._state
        return s.centroids is not None and s.codebooks is not None

    @property
    def centroids(self) -> torch.Tensor | None:
        return self._state.centroids

    @property
    def codebooks(self) -> torch.Tensor | None:
        return self._state.codebooks

    def set_quantizers(self, centroids: torch.Tensor, codebooks: torch.Tensor) -> None:
        """Use given coarse centroids [nlist, d] and residual codebooks [M, K, d / M] (the index must be empty)."""
        self._editable()
        cen = check_codebooks(centroids[None] if isinstance(centroids, torch.Tensor) and centroids.dim() == 2
                              else centroids, 1, self.nlist, self.d, "centroids")[0]
        cb = check_codebooks(codebooks, self.M, self.K, self.d // self.M)
        with self._lock:
            self._require_empty("replace the quantizers")
            self._state = _State(cen, cb, self._state.lists)

    def _require_empty(self, what: str) -> None:
        n = self._state.lists.ntotal
        if n:
            raise RuntimeError(f"cannot {what} of an index that holds {n} codes encoded with the current ones: "
                               "reset() it first, or build a new index")

    def train(self, x, *, iters: int = 25, seed: int = 0, progress: bool | None = None) -> IVFPQIndex:
        """Coarse k-means (nlist centroids), then PQ codebooks on the residuals of x [n, d] (the index must be
        empty)."""
        self._editable()
        self._require_empty("train the quantizers")
        x = as_matrix(x, self.d, "x")
        if x.shape[0] < self.nlist:
            raise ValueError(f"training needs at least nlist = {self.nlist} vectors, got {x.shape[0]}")
        centroids = train_pq(x, 1, self.nlist, iters=iters, seed=seed, progress=progress)[0]
        residuals = x - centroids[_assign(x, centroids, self.metric)]
        codebooks = train_pq(residuals, self.M, self.K, iters=iters, seed=seed, progress=progress)
        self.set_quantizers(centroids, codebooks)
        return self

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest list of each vector of x [n, d] -> int64 [n]."""
        s = self._trained()
        return _assign(as_matrix(x, self.d, "x"), s.centroids, self.metric)

    def _editable(self) -> None:
        if self.readonly:
            raise RuntimeError("the index was loaded with mmap=True and is read-only; load it without mmap to edit")

    def _trained(self) -> _State:
        s = self._state
        if s.centroids is None or s.codebooks is None:
            raise RuntimeError("the index is not trained: call train() first")
        return s

    def add(self, x, ids=None) -> None:
        """Assign x [n, d] to lists, PQ-encode the residuals, append with int64 ids >= 0 (default ntotal, ...).
        Nothing changes when it raises."""
        self._editable()
        s = self._trained()
        x = as_matrix(x, self.d, "x")
        if ids is not None:
            new_ids(ids, x.shape[0], 0)  # check the ids before the encoding work
        lists = _assign(x, s.centroids, self.metric)
        self._append(s, lists, ops.encode(x - s.centroids[lists], s.codebooks), ids)

    def add_preassigned(self, lists, codes, ids=None) -> None:
        """Append codes [n, M] of residuals to the given lists [n]. Nothing changes when it raises."""
        self._editable()
        s = self._trained()
        codes = torch.as_tensor(codes)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        lists = as_ids(lists, "lists")
        if lists.shape != (codes.shape[0],) or (lists.numel() and int(lists.max()) >= self.nlist):
            raise ValueError(f"lists must be [n = {codes.shape[0]}] ints in [0, nlist = {self.nlist})")
        self._append(s, lists, codes, ids)

    def _append(self, s: _State, lists: torch.Tensor, codes: torch.Tensor, ids) -> None:
        codes = codes.to("cpu", torch.uint8)
        with self._lock:
            cur = self._state
            if cur.centroids is not s.centroids or cur.codebooks is not s.codebooks:
                raise RuntimeError("the quantizers changed while these codes were computed")
            ids = new_ids(ids, codes.shape[0], cur.lists.ntotal)
            order = torch.argsort(lists, stable=True)
            ls, counts = torch.unique_consecutive(lists[order], return_counts=True)
            changes = {}
            for li, part in zip(ls.tolist(), torch.split(order, counts.tolist()), strict=True):
                changes[li] = (torch.cat([_tensor(cur.lists.codes[li]), codes[part]]),
                               torch.cat([_tensor(cur.lists.ids[li]), ids[part]]))
            self._state = _State(cur.centroids, cur.codebooks, cur.lists.replace(changes, check_range=False),
                                 None, cur.cache)

    def remove(self, ids) -> int:
        """Remove every entry whose id is in ids; returns how many were removed."""
        self._editable()
        with self._lock:
            s = self._state
            changes, removed = {}, 0
            for li in range(self.nlist):
                lid = _tensor(s.lists.ids[li])
                gone = remove_mask(lid, ids)
                if gone.any():
                    removed += int(gone.sum())
                    changes[li] = (_tensor(s.lists.codes[li])[~gone], lid[~gone])
            if changes:
                self._state = _State(s.centroids, s.codebooks, s.lists.replace(changes, check_range=False), None,
                                     s.cache)
            return removed

    def reset(self) -> None:
        """Remove every entry (the quantizers stay)."""
        self._editable()
        with self._lock:
            s = self._state
            self._state = _State(s.centroids, s.codebooks, ops.InvertedLists.empty(self.nlist, self.M, self.K),
                                 None, s.cache)

    def __len__(self) -> int:
        return self._state.lists.ntotal

    @property
    def ntotal(self) -> int:
        return len(self)

    def list_sizes(self) -> list[int]:
        return self._state.lists.sizes.tolist()

    @property
    def invlists(self) -> ops.InvertedLists:
        """The inverted lists of the current state (immutable: a later mutation makes new ones)."""
        return self._state.lists

    def list_codes(self, li: int) -> torch.Tensor:
        """Codes [n_l, M] uint8 of list li."""
        return _tensor(self._state.lists.codes[li])

    def list_ids(self, li: int) -> torch.Tensor:
        """Ids [n_l] int64 of list li."""
        return _tensor(self._state.lists.ids[li])

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] (centroid + residual) of the given ids (KeyError for an unknown id)."""
        s = self._trained()
        if s.source is not None:
            s.source.check_unchanged()
        want = as_ids(ids).reshape(-1)
        out = torch.empty((want.shape[0], self.d))
        found = torch.zeros(want.shape[0], dtype=torch.bool)
        for li in range(self.nlist):
            lid = _tensor(s.lists.ids[li])
            hit = torch.isin(want, lid) & ~found
            if hit.any():
                pos = (lid.unsqueeze(0) == want[hit].unsqueeze(1)).int().argmax(1)
                codes = _tensor(s.lists.codes[li])[pos]
                out[hit] = s.centroids[li] + ops.decode(codes, s.codebooks)
                found |= hit
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return out

    # ------------------------------------------------------------------ query

    def search(self, queries, k: int, nprobe: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64) over the nprobe nearest lists, best first."""
        s = self._trained()  # one consistent state for the whole search
        q = as_matrix(queries, self.d, "queries")
        k = check_k(k)
        if isinstance(nprobe, np.integer):
            nprobe = int(nprobe)
        if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
            raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
        nprobe = min(nprobe, self.nlist)
        if s.source is not None:
            s.source.check_unchanged()
        probes = _probe(s, q, nprobe, self.metric)
        return ops.ivf_search(q, s.centroids, s.codebooks, s.lists, None, probes, k, self.metric,
                              precomputed=_precomputed(s, self))

    PRECOMPUTED_MAX_BYTES = 256 << 20

    def probe(self, q: torch.Tensor, nprobe: int) -> torch.Tensor:
        """The nprobe lists nearest each query of q [Q, d], nearest first -> int64 [Q, nprobe]."""
        return _probe(self._trained(), as_matrix(q, self.d, "queries"), nprobe, self.metric)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path, progress: bool | None = None) -> None:
        """Write the index atomically: lists are streamed one after the other (list-major codes + ids); safe
        while other threads search or mutate (it writes one state)."""
        s = self._trained()
        if s.source is not None:
            s.source.check_unchanged()
        sizes = s.lists.sizes.numpy()
        meta = {"kind": self.kind, "d": self.d, "nlist": self.nlist, "M": self.M, "nbits": self.nbits,
                "metric": self.metric, "ntotal": int(sizes.sum())}
        with IndexWriter(path, meta) as w:
            w.add("centroids", s.centroids.numpy())
            w.add("codebooks", s.codebooks.numpy())
            w.add("list_offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            for name, parts in (("codes", s.lists.codes), ("ids", s.lists.ids)):
                w.begin(name, np.uint8 if name == "codes" else np.int64, (self.M,) if name == "codes" else ())
                quiet = None if progress is None else not progress
                for part in tqdm(parts, desc=f"saving {name}", disable=quiet, leave=False):
                    w.extend(name, np.asarray(part))

    @classmethod
    def _from_file(cls, f: IndexFile) -> IVFPQIndex:
        d, M, nbits, metric, ntotal = meta_pq(f)
        nlist = f.meta_reader().int("nlist", 1, 1 << 30)
        K = 1 << nbits
        f.expect({"centroids": ("<f4", (nlist, d)), "codebooks": ("<f4", (M, K, d // M)),
                  "list_offsets": ("<i8", (nlist + 1,)), "codes": ("u1", (ntotal, M)), "ids": ("<i8", (ntotal,))})
        index = cls(d, nlist, M, nbits, metric)
        centroids = finite_section(f, f.array("centroids"), "centroids")
        codebooks = finite_section(f, f.array("codebooks"), "codebooks")
        offsets = np.array(f.array("list_offsets"))
        if offsets[0] != 0 or offsets[-1] != ntotal or np.any(np.diff(offsets) < 0):
            raise IndexFileError(f"{f.path}: section 'list_offsets' must rise from 0 to ntotal = {ntotal}, "
                                 f"got {offsets[:3].tolist()} ... {offsets[-2:].tolist()}")
        codes, ids = f.array("codes"), f.array("ids")
        verified_codes(f, codes, K)
        verified_ids(f, ids)
        wrap = (lambda a: a) if f.mmap else torch.from_numpy
        spans = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        lists = ops.InvertedLists([wrap(codes[a:b]) for a, b in spans], [wrap(ids[a:b]) for a, b in spans], M, K,
                                  check_range=False)  # verified above, or clamped by the scan (verify=False)
        index._state = _State(centroids, codebooks, lists, f if f.mmap else None)
        index.readonly = f.mmap
        return index


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a


def _assign(x: torch.Tensor, centroids: torch.Tensor, metric: str) -> torch.Tensor:
    return ops.encode(x, centroids[None], metric).long()[:, 0]


def _probe(s: _State, q: torch.Tensor, nprobe: int, metric: str) -> torch.Tensor:
    cnorm = s.cache.get("cnorm")
    if cnorm is None:
        cnorm = s.cache["cnorm"] = (s.centroids * s.centroids).sum(1)
    dots = q @ s.centroids.T  # one GEMM; l2 ranks by ||c||^2 - 2 q.c (||q||^2 is common)
    if metric == "ip":
        return dots.topk(nprobe, dim=1).indices
    return (cnorm - 2 * dots).topk(nprobe, dim=1, largest=False).indices


def _precomputed(s: _State, index: IVFPQIndex) -> torch.Tensor | None:
    """The l2 precomputed table [nlist, M, K] (cached per state), unless over PRECOMPUTED_MAX_BYTES."""
    if index.metric != "l2" or index.nlist * index.M * index.K * 4 > index.PRECOMPUTED_MAX_BYTES:
        return None
    table = s.cache.get("table")
    if table is None:
        table = s.cache["table"] = ops.ivf_precomputed_table(s.centroids, s.codebooks)
    return table
