"""What the indexes share: argument checks, ids, the file-schema checks of PQ parameters.

Thread safety (every index kind): the searchable state is one immutable snapshot object. ``search`` reads
``self._state`` once and uses nothing else, so it sees one whole state; a mutation (``add``, ``remove``,
``train``, ...) checks its arguments and computes the new state under the index's writer lock, then
publishes it with one assignment. A failed mutation publishes nothing, and a search that started on the old
state keeps its arrays alive (the native scan reads them without the GIL) until it returns.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from .. import ops
from .storage import IndexFile, IndexFileError, Meta

INDEX_METRICS = ("l2", "ip")
_INT64_MAX = (1 << 63) - 1


def as_matrix(x, d: int, name: str, finite: bool = True) -> torch.Tensor:
    """float32 [n, d] from a tensor or array; NaN / inf (unless ``finite`` is False: the caller checks) and a
    wrong dimension are clear errors."""
    if type(x) is torch.Tensor and x.dtype is torch.float32:  # the common case, attributes read once
        shape = x.shape
        if len(shape) == 2 and shape[1] == d:
            if finite:
                ops.checks.finite(x, name)
            return x
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    shape = x.shape
    if len(shape) != 2 or shape[1] != d:
        raise ValueError(f"{name} must be [n, d = {d}], got shape {tuple(shape)}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got {x.dtype}")
    if x.dtype is not torch.float32:
        x = x.to(torch.float32)
    if finite:
        ops.checks.finite(x, name)
    return x


def as_ids(ids, name: str = "ids") -> torch.Tensor:
    """int64 [n] from integer ids (tensor, array, sequence): floats, bools, strings, values outside int64 and
    negative ids (reserved: -1 marks a missing result) are errors."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype in (torch.uint16, torch.uint32, torch.uint64):
            ids = ids.numpy()
        elif ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got {str(ids.dtype).replace('torch.', '')}")
    if not isinstance(ids, torch.Tensor):
        try:
            a = np.asarray(ids)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{name} must be an array of integers ({err})") from None
        if a.dtype == object or a.dtype.kind not in "iu":
            got = "mixed or too large values" if a.dtype == object else a.dtype
            raise TypeError(f"{name} must be integers, got {got}")
        if a.dtype.kind == "u" and a.size and int(a.max()) > _INT64_MAX:
            raise ValueError(f"{name} must fit in int64, got {int(a.max())}")
        ids = torch.from_numpy(a.astype(np.int64))
    t = ids.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must be >= 0 (negative ids are reserved: -1 marks a missing result), "
                         f"got {int(t.min())}")
    return t


def new_ids(ids, n: int, start: int) -> torch.Tensor:
    """int64 [n] ids: the given ones, or start, start + 1, ... ."""
    if ids is None:
        return torch.arange(start, start + n, dtype=torch.int64)
    t = as_ids(ids)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"ids must be [n = {n}], got shape {tuple(t.shape)}")
    return t


def check_metric(metric: str) -> str:
    if metric not in INDEX_METRICS:
        raise ValueError(f"metric must be one of {INDEX_METRICS}, got {metric!r}")
    return metric


def check_pq(d: int, M: int, nbits: int) -> int:
    """Validate a PQ layout; returns K."""
    if not _is_int(d) or d < 1 or not _is_int(M) or M < 1:
        raise ValueError(f"d and M must be positive ints, got d={d!r}, M={M!r}")
    if d % M:
        raise ValueError(f"d = {d} is not divisible into M = {M} sub-spaces")
    if nbits not in (4, 8) or isinstance(nbits, bool):
        raise ValueError(f"nbits must be 4 or 8, got {nbits!r}")
    return 1 << nbits


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_flag(v, name: str) -> bool:
    if type(v) is not bool:
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def check_k(k) -> int:
    """k as an int >= 1 (numpy integers accepted)."""
    if type(k) is int and k >= 1:
        return k
    return ops.checks.topk_k(int(k) if isinstance(k, np.integer) else k)


def check_codebooks(codebooks, M: int, K: int, dsub: int, name: str = "codebooks") -> torch.Tensor:
    """float32 contiguous [M, K, dsub], finite."""
    ops.checks.tensor(codebooks, name, 3, ops.checks.FLOATS)
    if tuple(codebooks.shape) != (M, K, dsub):
        raise ValueError(f"{name} must be [M, K, d / M] = {[M, K, dsub]}, got {list(codebooks.shape)}")
    c = codebooks.detach().to("cpu", torch.float32).contiguous()
    ops.checks.finite(c, name)
    return c


def remove_mask(ids: torch.Tensor, remove) -> torch.Tensor:
    """bool [n]: which of ids are in remove."""
    return torch.isin(ids, as_ids(remove, "ids to remove").reshape(-1))


def meta_pq(f: IndexFile, m: Meta) -> tuple[int, int, int, str, int]:
    """(d, M, nbits, metric, ntotal) from a file's meta, each checked (IndexFileError naming the field)."""
    d, M = m.int("d", 1, 1 << 20), m.int("M", 1, 1 << 16)
    nbits, metric, ntotal = m.choice("nbits", (4, 8)), m.choice("metric", INDEX_METRICS), m.int("ntotal", 0)
    if d % M:
        raise IndexFileError(f"{f.path}: meta field {m.name('M')} = {M} does not divide {m.name('d')} = {d}")
    return d, M, nbits, metric, ntotal


def verified_codes(f: IndexFile, codes: np.ndarray, K: int, name: str = "codes") -> None:
    """With verification on: every code below K (a crafted file could hold bytes >= K)."""
    if f.verifies and K < 256 and codes.size:
        hi = int(_chunked_max(codes))
        if hi >= K:
            raise IndexFileError(f"{f.path}: section {name!r} holds code {hi}, outside [0, K = {K})")


def verified_ids(f: IndexFile, ids: np.ndarray, name: str = "ids") -> None:
    if f.verifies and ids.size and int(_chunked_min(ids)) < 0:
        raise IndexFileError(f"{f.path}: section {name!r} holds negative ids")


def finite_section(f: IndexFile, a: np.ndarray, name: str) -> torch.Tensor:
    """A small float section (codebooks, centroids) copied into a tensor; NaN / inf is an IndexFileError."""
    t = torch.from_numpy(np.array(a, dtype=np.float32))
    if not bool(torch.isfinite(t).all()):
        raise IndexFileError(f"{f.path}: section {name!r} holds NaN or inf")
    return t


_STEP = 1 << 24


def _chunked_max(a: np.ndarray):
    flat = a.reshape(-1)
    return max(flat[i : i + _STEP].max() for i in range(0, flat.size, _STEP))


def _chunked_min(a: np.ndarray):
    flat = a.reshape(-1)
    return min(flat[i : i + _STEP].min() for i in range(0, flat.size, _STEP))


class Index:
    """What every index kind shares: one immutable state (``self._state``) that a search reads once, mutations
    that compute the next state under ``self._lock`` and publish it whole (``_set_state``), persistence.

    A kind implements the pure state functions: ``_count(s)``, ``_search_in(s, q, k, **params)`` (and may
    override ``_candidates``),
    ``_add_to(s, x, ids)`` (x float32 [n, d], finite; ids int64 [n] or None: ntotal, ntotal + 1, ...),
    ``_remove_from(s, ids) -> (s, removed)``, ``_emptied(s)``, ``_trained(s)``, ``_train(x, ...) -> s`` and,
    for files, ``_meta(s)``, ``_write(s, w, prefix, progress)``, ``_schema(f, meta, prefix)`` and
    ``_read(f, meta, prefix)``. Composite kinds (a rotation in front, a refinement behind) hold their base's
    state inside theirs and publish both, so that a search of the composite sees one state of everything.
    """

    kind = "index"
    d: int
    metric: str

    def _init_index(self) -> None:
        self._lock = threading.Lock()  # writers only
        self.readonly = False

    # ------------------------------------------------------------------ state protocol (per kind)

    def _count(self, s) -> int:
        raise NotImplementedError

    def _trained(self, s) -> bool:
        raise NotImplementedError

    def _sources(self, s) -> list:
        """The memory-mapped files the state's arrays map (checked unchanged before each use)."""
        return []

    def _set_state(self, s) -> None:
        self._state = s

    def _candidates(self, s, q: torch.Tensor, k: int, **params) -> torch.Tensor:
        """The ids [Q, k] of the k best of each query in no particular order (-1 past ntotal): the input of a
        re-rank, which spares the sort where a kind can."""
        return self._search_in(s, q, k, **params)[1]

    def _refined(self, s, q: torch.Tensor, k: int, refine: ops.Refinement, metric: str, **params
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best of each query's ``refine.candidates`` candidates re-ranked with the stored vectors (the
        ids are their rows); a kind may do both stages in one pass."""
        rows = self._candidates(s, q, refine.candidates, **params)
        return ops.refine_topk(q, refine.vectors, rows, k, metric, labels=refine.labels, sq8=refine.sq8)

    # ------------------------------------------------------------------ public

    @property
    def is_trained(self) -> bool:
        return self._trained(self._state)

    def __len__(self) -> int:
        return self._count(self._state)

    @property
    def ntotal(self) -> int:
        return len(self)

    def _editable(self) -> None:
        if self.readonly:
            raise RuntimeError("the index was loaded with mmap=True and is read-only; load it without mmap to edit")

    def _ready(self):
        s = self._state
        if not self._trained(s):
            raise RuntimeError("the index is not trained: call train() first")
        for f in self._sources(s):
            f.check_unchanged()
        return s

    def search(self, queries, k: int, **params) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] float32, ids [Q, k] int64), best first; -1 / +inf (-inf for ip) past ntotal.
        Keyword parameters depend on the kind (nprobe, k_factor, exact, ...)."""
        s = self._ready()  # one consistent state for the whole search
        return self._search_in(s, as_matrix(queries, self.d, "queries"), check_k(k), **params)

    def search_parameters(self) -> tuple[str, ...]:
        """The keyword parameters ``search`` takes (FAISS's ParameterSpace names: nprobe, k_factor, ...)."""
        return ()

    def add(self, x, ids=None) -> None:
        """Add x [n, d] with int64 ids >= 0 (default: ntotal, ntotal + 1, ...). Nothing changes when it raises."""
        self._editable()
        if not self._trained(self._state):
            raise RuntimeError("the index is not trained: call train() first")
        x = as_matrix(x, self.d, "x")
        given = None if ids is None else new_ids(ids, x.shape[0], 0)
        with self._lock:
            self._set_state(self._add_to(self._state, x, given))

    def remove(self, ids) -> int:
        """Remove every entry whose id is in ids; returns how many were removed."""
        self._editable()
        gone = as_ids(ids, "ids to remove").reshape(-1)
        with self._lock:
            s, n = self._remove_from(self._state, gone)
            if n:
                self._set_state(s)
            return n

    def reset(self) -> None:
        """Remove every entry (what was trained stays)."""
        self._editable()
        with self._lock:
            self._set_state(self._emptied(self._state))

    def train(self, x, *, iters: int = 25, seed: int = 0, progress: bool | None = None):
        """Learn the quantizers (and rotation) from x [n, d]; the index must be empty."""
        self._editable()
        self._require_empty("train")
        x = as_matrix(x, self.d, "x")
        s = self._train(x, iters=iters, seed=seed, progress=progress)
        with self._lock:
            self._require_empty("train")
            self._set_state(s)
        return self

    def tune(self, x, **options) -> dict:
        """Fine-tune the PQ codebooks on a sample x [n, d] against the ranking of exact neighbours (see
        :mod:`sqret.index.tune`; options: queries, steps, batch, lr, k, keep, ...), before any ``add``.
        Returns a report with the held-out recall before and after."""
        self._editable()
        if not self.is_trained:
            raise RuntimeError("the index is not trained: call train() first")
        self._require_empty("tune")
        return self._tune(as_matrix(x, self.d, "x"), options)

    def _tune(self, x: torch.Tensor, options: dict) -> dict:
        raise NotImplementedError(f"{type(self).__name__} has no codebooks to tune")

    def _require_empty(self, what: str) -> None:
        n = self._count(self._state)
        if n:
            raise RuntimeError(f"cannot {what} an index that holds {n} codes encoded with the current quantizers: "
                               "reset() it first, or build a new index")

    def save(self, path, progress: bool | None = None) -> None:
        """Write the index atomically (see sqret.index.storage for the format); safe while other threads
        search or mutate (it writes one state)."""
        s = self._ready()
        from .storage import IndexWriter

        with IndexWriter(path, self._meta(s)) as w:
            self._write(s, w, "", progress)
