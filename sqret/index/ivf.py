"""IVFPQIndex: coarse k-means centroids, inverted lists, product quantization of the residuals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import ops
from ..cluster import train_pq
from .base import (
    Index,
    as_ids,
    as_matrix,
    check_codebooks,
    check_flag,
    check_metric,
    check_pq,
    finite_section,
    meta_pq,
    new_ids,
    verified_codes,
    verified_ids,
)
from .storage import IndexFile, IndexFileError, Meta


@dataclass(frozen=True, eq=False)
class _State:
    """One searchable state (see sqret.index.base on thread safety); ``cache`` holds what searches derive
    from the centroids and codebooks (the l2 precomputed table, the centroid norms), shared with the states
    derived from this one; ``own`` what they derive from its lists (the searcher), this state's alone."""

    centroids: torch.Tensor | None  # [nlist, d] float32
    codebooks: torch.Tensor | None  # [M, K, d / M] float32
    lists: ops.InvertedLists
    source: IndexFile | None = None  # the memory-mapped file the lists map, checked before each scan
    cache: dict = field(default_factory=dict)
    own: dict = field(default_factory=dict)


class IVFPQIndex(Index):
    """Inverted-file index with PQ-encoded residuals (as FAISS IndexIVFPQ; ``by_residual=False`` encodes the
    vectors themselves, so one table per query serves every list); with ``fast_scan=True`` and nbits = 4 as
    IndexIVFPQFastScan: each list's codes in the fast-scan block layout, scanned with SIMD shuffles, scored
    ``exact``-ly or by their quantized distances.

    ``search(q, k, nprobe)`` scans the nprobe lists whose centroids are nearest to each query; for l2 the
    LUT is built on the residual query q - c_l, for ip the score is <q, c_l> + LUT(q) (by residual).
    Thread-safe: searches run concurrently with each other and with add / remove / save (see
    :mod:`sqret.index.base`).
    """

    kind = "ivfpq"
    PRECOMPUTED_MAX_BYTES = 256 << 20

    def __init__(self, d: int, nlist: int, M: int, nbits: int = 8, metric: str = "l2", *, fast_scan: bool = False,
                 exact: bool = True, by_residual: bool = True):
        self.K = check_pq(d, M, nbits)
        if not isinstance(nlist, (int, np.integer)) or isinstance(nlist, bool) or nlist < 1:
            raise ValueError(f"nlist must be a positive int, got {nlist!r}")
        if type(fast_scan) is not bool or (fast_scan and nbits != 4):
            raise ValueError(f"fast_scan (True or False) needs nbits = 4, got fast_scan={fast_scan!r}, nbits={nbits}")
        self.d, self.nlist, self.M, self.nbits = int(d), int(nlist), int(M), int(nbits)
        self.metric = check_metric(metric)
        self.fast_scan = fast_scan
        self.exact = check_flag(exact, "exact")
        self.by_residual = check_flag(by_residual, "by_residual")
        self._layout = "fastscan" if fast_scan else "codes"
        self._init_index()
        self.device = torch.device("cpu")
        self._state = _State(None, None, self._empty_lists())

    def to(self, device: torch.device | str) -> IVFPQIndex:
        """Search on ``device`` (``"cuda"``: the probed lists scanned on the GPU, results on the GPU); returns
        self. The index itself (training, add, remove, files) stays on the CPU; each state's lists are copied to
        the device once, at its first search there. Queries already on a CUDA device search there anyway."""
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"cannot search on {self.device}: no CUDA GPU here")
        return self

    def _empty_lists(self) -> ops.InvertedLists:
        return ops.InvertedLists.empty(self.nlist, self.M, self.K, self._layout)

    # ------------------------------------------------------------------ state functions

    def _count(self, s: _State) -> int:
        return s.lists.ntotal

    def _trained(self, s: _State) -> bool:
        return s.centroids is not None and s.codebooks is not None

    def _sources(self, s: _State) -> list:
        return [s.source] if s.source is not None else []

    def _train(self, x: torch.Tensor, *, iters: int, seed: int, progress) -> _State:
        if x.shape[0] < self.nlist:
            raise ValueError(f"training needs at least nlist = {self.nlist} vectors, got {x.shape[0]}")
        centroids = train_pq(x, 1, self.nlist, iters=iters, seed=seed, progress=progress)[0]
        residuals = x - centroids[_assign(x, centroids, self.metric)] if self.by_residual else x
        codebooks = train_pq(residuals, self.M, self.K, iters=iters, seed=seed, progress=progress)
        return _State(centroids, codebooks, self._empty_lists())

    def _add_to(self, s: _State, x: torch.Tensor, ids) -> _State:
        lists = _assign(x, s.centroids, self.metric)
        return self._appended(s, lists, ops.encode(x - s.centroids[lists] if self.by_residual else x, s.codebooks),
                              ids)

    def _appended(self, s: _State, lists: torch.Tensor, codes: torch.Tensor, ids) -> _State:
        codes = codes.to("cpu", torch.uint8)
        ids = new_ids(ids, codes.shape[0], s.lists.ntotal)
        order = torch.argsort(lists, stable=True)
        ls, counts = torch.unique_consecutive(lists[order], return_counts=True)
        changes = {}
        for li, part in zip(ls.tolist(), torch.split(order, counts.tolist()), strict=True):
            changes[li] = (self._stored(torch.cat([s.lists.list_codes(li), codes[part]])),
                           torch.cat([_tensor(s.lists.ids[li]), ids[part]]))
        return _State(s.centroids, s.codebooks, s.lists.replace(changes, check_range=False), None, s.cache)

    def _remove_from(self, s: _State, ids: torch.Tensor) -> tuple[_State, int]:
        changes, removed = {}, 0
        for li in range(self.nlist):
            lid = _tensor(s.lists.ids[li])
            gone = torch.isin(lid, ids)
            if gone.any():
                removed += int(gone.sum())
                changes[li] = (self._stored(s.lists.list_codes(li)[~gone]), lid[~gone])
        if not changes:
            return s, 0
        return _State(s.centroids, s.codebooks, s.lists.replace(changes, check_range=False), None, s.cache), removed

    def _emptied(self, s: _State) -> _State:
        return _State(s.centroids, s.codebooks, self._empty_lists(), None, s.cache)

    def _search_in(self, s: _State, q: torch.Tensor, k: int, *, nprobe: int = 1, exact: bool | None = None,
                   sorted: bool = True, refine: ops.Refinement | None = None  # noqa: A002 (torch.topk's name)
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        exact = self.exact if exact is None else check_flag(exact, "exact")
        nprobe = check_nprobe(nprobe, self.nlist)
        device = q.device if q.device.type != "cpu" else self.device
        if device.type != "cpu":  # the GPU scan: centroids, codebooks and (in ops) the lists on the device
            q = q.to(device)
            key = ("device", str(device))
            on = s.cache.get(key)
            if on is None:
                on = s.cache[key] = (s.centroids.to(device), s.codebooks.to(device),
                                     (s.centroids * s.centroids).sum(1).to(device))
            probes = ops.coarse_probe(q, on[0], nprobe, self.metric, centroid_norms=on[2])
            return ops.ivf_search(q, on[0], on[1], s.lists, None, probes, k, self.metric, exact=exact,
                                  by_residual=self.by_residual, sorted=sorted)
        return self._searcher(s).search(q, k, nprobe, exact=exact, sorted=sorted, refine=refine)

    def _searcher(self, s: _State) -> ops.IVFSearcher:
        """The CPU search of this state's lists, its arguments checked once (made by its first search)."""
        searcher = s.own.get("searcher")
        if searcher is None:
            cnorm, ct = _probe_caches(s)
            searcher = s.own["searcher"] = ops.IVFSearcher(
                s.centroids, s.codebooks, s.lists, self.metric, precomputed=self._precomputed(s),
                by_residual=self.by_residual, centroid_norms=cnorm, centroids_t=ct)
        return searcher

    def _candidates(self, s: _State, q: torch.Tensor, k: int, **params) -> torch.Tensor:
        return self._search_in(s, q, k, **params, sorted=False)[1]

    def _refined(self, s: _State, q: torch.Tensor, k: int, refine: ops.Refinement, metric: str, **params
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages in ops.ivf_search (on the CPU, one native pass per query); on a GPU, its candidates
        re-ranked against the queries as given."""
        if q.device.type != "cpu" or self.device.type != "cpu":
            return super()._refined(s, q, k, refine, metric, **params)
        return self._search_in(s, q, k, **params, refine=refine)

    def _stored(self, codes: torch.Tensor) -> torch.Tensor:
        """A list's codes [n, M] as this index stores them (fast-scan blocks when fast_scan)."""
        return ops.fastscan_pack(codes).blocks if self.fast_scan else codes.contiguous()

    def _precomputed(self, s: _State) -> torch.Tensor | None:
        """The l2 precomputed table [nlist, M, K] (cached per state), unless over PRECOMPUTED_MAX_BYTES."""
        if self.metric != "l2" or not self.by_residual or self.nlist * self.M * self.K * 4 > self.PRECOMPUTED_MAX_BYTES:
            return None
        table = s.cache.get("table")
        if table is None:
            table = s.cache["table"] = ops.ivf_precomputed_table(s.centroids, s.codebooks)
        return table

    # ------------------------------------------------------------------ build

    @property
    def centroids(self) -> torch.Tensor | None:
        return self._state.centroids

    @property
    def codebooks(self) -> torch.Tensor | None:
        return self._state.codebooks

    def set_quantizers(self, centroids: torch.Tensor, codebooks: torch.Tensor) -> None:
        """Use given coarse centroids [nlist, d] and (residual) codebooks [M, K, d / M]; the index must be empty."""
        self._editable()
        ops.checks.tensor(centroids, "centroids", 2, ops.checks.FLOATS)
        cen = check_codebooks(centroids[None], 1, self.nlist, self.d, "centroids")[0]
        cb = check_codebooks(codebooks, self.M, self.K, self.d // self.M)
        with self._lock:
            self._require_empty("replace the quantizers of")
            self._set_state(_State(cen, cb, self._state.lists))

    def _tune(self, x: torch.Tensor, options: dict) -> dict:
        from .tune import tune_codebooks

        s = self._state
        offsets = s.centroids[_assign(x, s.centroids, self.metric)] if self.by_residual else None
        C, report = tune_codebooks(s.codebooks, x, self.metric, offsets, **options)
        self.set_quantizers(s.centroids, C)
        return report

    def assign(self, x) -> torch.Tensor:
        """Nearest list of each vector of x [n, d] -> int64 [n]."""
        return _assign(as_matrix(x, self.d, "x"), self._ready().centroids, self.metric)

    def add_preassigned(self, lists, codes, ids=None) -> None:
        """Append codes [n, M] (of residuals, by_residual) to the given lists [n]. Nothing changes when it raises."""
        self._editable()
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() first")
        codes = torch.as_tensor(codes)
        ops.checks.codes(codes, self.M, self.K, False)
        ops.checks.code_range(codes, self.K, False)
        lists = as_ids(lists, "lists")
        if lists.shape != (codes.shape[0],) or (lists.numel() and int(lists.max()) >= self.nlist):
            raise ValueError(f"lists must be [n = {codes.shape[0]}] ints in [0, nlist = {self.nlist})")
        given = None if ids is None else new_ids(ids, codes.shape[0], 0)
        with self._lock:
            self._set_state(self._appended(self._state, lists, codes, given))

    # ------------------------------------------------------------------ query

    def list_sizes(self) -> list[int]:
        return self._state.lists.sizes.tolist()

    @property
    def invlists(self) -> ops.InvertedLists:
        """The inverted lists of the current state (immutable: a later mutation makes new ones)."""
        return self._state.lists

    def list_codes(self, li: int) -> torch.Tensor:
        """Codes [n_l, M] uint8 of list li (unpacked from the fast-scan layout)."""
        return self._state.lists.list_codes(li)

    def list_ids(self, li: int) -> torch.Tensor:
        """Ids [n_l] int64 of list li."""
        return _tensor(self._state.lists.ids[li])

    def reconstruct(self, ids) -> torch.Tensor:
        """Decoded vectors [n, d] (centroid + residual) of the given ids (KeyError for an unknown id)."""
        s = self._ready()
        want = as_ids(ids).reshape(-1)
        out = torch.empty((want.shape[0], self.d))
        found = torch.zeros(want.shape[0], dtype=torch.bool)
        for li in range(self.nlist):
            lid = _tensor(s.lists.ids[li])
            hit = torch.isin(want, lid) & ~found
            if hit.any():
                pos = (lid.unsqueeze(0) == want[hit].unsqueeze(1)).int().argmax(1)
                codes = s.lists.list_codes(li)[pos]
                out[hit] = ops.decode(codes, s.codebooks) + (s.centroids[li] if self.by_residual else 0)
                found |= hit
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        return out

    def search(self, queries, k: int, nprobe: int = 1, *, exact: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64) over the nprobe nearest lists, best first. ``exact``
        (default: the index's) scores fast-scan lists exactly, or by their quantized distances when False."""
        return super().search(queries, k, nprobe=nprobe, exact=exact)

    def search_parameters(self) -> tuple[str, ...]:
        return ("nprobe", "exact")

    def probe(self, q, nprobe: int) -> torch.Tensor:
        """The nprobe lists nearest each query of q [Q, d], nearest first -> int64 [Q, nprobe]."""
        return _probe(self._ready(), as_matrix(q, self.d, "queries"), check_nprobe(nprobe, self.nlist), self.metric)

    # ------------------------------------------------------------------ persistence

    def _meta(self, s: _State) -> dict:
        return {"kind": self.kind, "d": self.d, "nlist": self.nlist, "M": self.M, "nbits": self.nbits,
                "metric": self.metric, "ntotal": s.lists.ntotal, "fast_scan": self.fast_scan, "exact": self.exact,
                "by_residual": self.by_residual}

    def _write(self, s: _State, w, prefix: str, progress) -> None:
        """Lists streamed one after the other (list-major codes or fast-scan blocks, then ids)."""
        sizes = s.lists.sizes.numpy()
        w.add(prefix + "centroids", s.centroids.numpy())
        w.add(prefix + "codebooks", s.codebooks.numpy())
        w.add(prefix + "list_offsets", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        if self.fast_scan:  # the block layout on disk: each list's blocks, list after list
            nblocks = (sizes + 63) // 64
            w.add(prefix + "block_offsets", np.concatenate([[0], np.cumsum(nblocks)]).astype(np.int64))
            sections = (("blocks", np.uint8, (self.M, 32), s.lists.codes), ("ids", np.int64, (), s.lists.ids))
        else:
            sections = (("codes", np.uint8, (self.M,), s.lists.codes), ("ids", np.int64, (), s.lists.ids))
        quiet = None if progress is None else not progress
        for name, dtype, tail, parts in sections:
            w.begin(prefix + name, dtype, tail)
            for part in tqdm(parts, desc=f"saving {name}", disable=quiet, leave=False):
                w.extend(prefix + name, np.asarray(part))

    @staticmethod
    def _meta_ivf(f: IndexFile, meta: Meta) -> tuple:
        d, M, nbits, metric, ntotal = meta_pq(f, meta)
        nlist = meta.int("nlist", 1, 1 << 30)
        fast = meta.flag("fast_scan", default=False)
        if fast and nbits != 4:
            raise IndexFileError(f"{f.path}: meta field {meta.name('fast_scan')} needs nbits = 4, got {nbits}")
        return d, M, nbits, metric, ntotal, nlist, fast

    @classmethod
    def _schema(cls, f: IndexFile, meta: Meta, prefix: str) -> dict:
        d, M, nbits, _, ntotal, nlist, fast = cls._meta_ivf(f, meta)
        schema = {"centroids": ("<f4", (nlist, d)), "codebooks": ("<f4", (M, 1 << nbits, d // M)),
                  "list_offsets": ("<i8", (nlist + 1,)), "ids": ("<i8", (ntotal,))}
        if fast:
            s = f.sections.get(prefix + "blocks")
            nblocks = s["shape"][0] if s is not None and len(s["shape"]) == 3 else 0
            schema.update({"block_offsets": ("<i8", (nlist + 1,)), "blocks": ("u1", (nblocks, M, 32))})
        else:
            schema["codes"] = ("u1", (ntotal, M))
        return {prefix + k: v for k, v in schema.items()}

    @classmethod
    def _read(cls, f: IndexFile, meta: Meta, prefix: str) -> IVFPQIndex:
        d, M, nbits, metric, ntotal, nlist, fast = cls._meta_ivf(f, meta)
        index = cls(d, nlist, M, nbits, metric, fast_scan=fast, exact=meta.flag("exact", default=True),
                    by_residual=meta.flag("by_residual", default=True))
        K = 1 << nbits
        centroids = finite_section(f, f.array(prefix + "centroids"), prefix + "centroids")
        codebooks = finite_section(f, f.array(prefix + "codebooks"), prefix + "codebooks")
        offsets = np.array(f.array(prefix + "list_offsets"))
        if offsets[0] != 0 or offsets[-1] != ntotal or np.any(np.diff(offsets) < 0):
            raise IndexFileError(f"{f.path}: section {prefix + 'list_offsets'!r} must rise from 0 to ntotal = "
                                 f"{ntotal}, got {offsets[:3].tolist()} ... {offsets[-2:].tolist()}")
        ids = f.array(prefix + "ids")
        verified_ids(f, ids, prefix + "ids")
        wrap = (lambda a: a) if f.mmap else torch.from_numpy
        spans = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        if fast:  # nibbles: always in range
            blocks, bo = f.array(prefix + "blocks"), np.array(f.array(prefix + "block_offsets"))
            if bo[0] != 0 or np.any(bo[1:] - bo[:-1] != (np.diff(offsets) + 63) // 64) or bo[-1] != blocks.shape[0]:
                raise IndexFileError(f"{f.path}: section {prefix + 'block_offsets'!r} does not match the lists' "
                                     "sizes")
            parts = [wrap(blocks[a:b]) for a, b in zip(bo[:-1].tolist(), bo[1:].tolist(), strict=True)]
        else:
            codes = f.array(prefix + "codes")
            verified_codes(f, codes, K, prefix + "codes")
            parts = [wrap(codes[a:b]) for a, b in spans]
        lists = ops.InvertedLists(parts, [wrap(ids[a:b]) for a, b in spans], M, K, check_range=False,
                                  layout=index._layout)  # verified above, or clamped by the scan (verify=False)
        index._state = _State(centroids, codebooks, lists, f if f.mmap else None)
        index.readonly = f.mmap
        return index


def check_nprobe(nprobe, nlist: int) -> int:
    """nprobe as an int in [1, nlist] (numpy integers accepted)."""
    if isinstance(nprobe, np.integer):
        nprobe = int(nprobe)
    if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
        raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
    if nprobe > nlist:
        raise ValueError(f"nprobe = {nprobe} is more than the nlist = {nlist} lists")
    return nprobe


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a


def _assign(x: torch.Tensor, centroids: torch.Tensor, metric: str) -> torch.Tensor:
    return ops.encode(x, centroids[None], metric).long()[:, 0]


def _probe_caches(s: _State) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse probe's caches of this state: ||c||^2 [nlist] and the centroids transposed [d, nlist]."""
    cnorm, ct = s.cache.get("cnorm"), s.cache.get("centroids_t")
    if cnorm is None:
        cnorm = s.cache["cnorm"] = (s.centroids * s.centroids).sum(1)
    if ct is None:
        ct = s.cache["centroids_t"] = s.centroids.to(torch.float32).T.contiguous()
    return cnorm, ct


def _probe(s: _State, q: torch.Tensor, nprobe: int, metric: str) -> torch.Tensor:
    cnorm, ct = _probe_caches(s)
    return ops.coarse_probe(q, s.centroids, nprobe, metric, centroid_norms=cnorm, centroids_t=ct)
