"""RefineIndex: a base index's k * k_factor candidates re-ranked with exact distances to stored vectors
(FAISS's IndexRefine / IndexRefineFlat, ScaNN's reorder): float32 ("flat"), float16 ("fp16") or 8-bit
scalar-quantized ("sq8") vectors, in memory or memory-mapped beside the codes.

The base index holds row numbers as its ids; ``labels[row]`` is the user's id (-1 once removed: rows are
never renumbered, so the base's ids stay valid; ``reset`` frees them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import ops
from .base import Index, finite_section, new_ids, verified_ids
from .storage import IndexFile, IndexFileError, Meta

STORAGES = {"flat": ("<f4", torch.float32), "fp16": ("<f2", torch.float16), "sq8": ("u1", torch.uint8)}


@dataclass(frozen=True, eq=False)
class _State:
    base: object  # the base index's state
    rows: torch.Tensor | np.ndarray  # [n_rows, d] stored vectors (float32 / float16 / SQ8 codes)
    labels: torch.Tensor | np.ndarray  # [n_rows] int64: the id of each row, -1 once removed
    live: int  # rows not removed
    sq8: tuple[torch.Tensor, torch.Tensor] | None = None  # (vmin [d], scale [d])
    source: IndexFile | None = None


def _tensor(a) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        import warnings

        with warnings.catch_warnings():  # read-only memory maps: never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return a


def check_k_factor(k_factor) -> float:
    if isinstance(k_factor, bool) or not isinstance(k_factor, (int, float, np.integer, np.floating)) or \
            not math.isfinite(k_factor) or k_factor < 1:
        raise ValueError(f"k_factor must be a number >= 1, got {k_factor!r}")
    return float(k_factor)


class RefineIndex(Index):
    """``base`` (any sqret index) proposes ``k * k_factor`` candidates, ranked again by exact distances to
    the stored vectors. ``storage``: "flat" (float32, FAISS RFlat), "fp16" (Refine(SQfp16)) or "sq8"
    (Refine(SQ8): 8 bits per dimension, range per dimension learned in ``train``).

    ``search(q, k, k_factor=..., **base_params)`` (nprobe, exact, ... go to the base). The base must not be
    used on its own once wrapped: add / remove through the refine index, which keeps both in one state.
    """

    kind = "refine"

    def __init__(self, base: Index, storage: str = "flat", *, k_factor: float = 1.0):
        if not isinstance(base, Index):
            raise TypeError(f"base must be a sqret index, got {type(base).__name__}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {tuple(STORAGES)}, got {storage!r}")
        if len(base):
            raise ValueError("the base index must be empty: the refine index adds the vectors to both")
        self.base, self.storage, self.k_factor = base, storage, check_k_factor(k_factor)
        self.d, self.metric = base.d, base.metric
        self._init_index()
        self._state = _State(base._state, self._empty_rows(), torch.empty(0, dtype=torch.int64), 0)

    def _empty_rows(self) -> torch.Tensor:
        return torch.empty((0, self.d), dtype=STORAGES[self.storage][1])

    # ------------------------------------------------------------------ state functions

    def _set_state(self, s: _State) -> None:
        self.base._set_state(s.base)
        self._state = s

    def _count(self, s: _State) -> int:
        return s.live

    def _trained(self, s: _State) -> bool:
        return self.base._trained(s.base) and (self.storage != "sq8" or s.sq8 is not None)

    def _sources(self, s: _State) -> list:
        return self.base._sources(s.base) + ([s.source] if s.source is not None else [])

    def _train(self, x: torch.Tensor, *, iters: int, seed: int, progress) -> _State:
        base = self.base._state if self.base._trained(self.base._state) else \
            self.base._train(x, iters=iters, seed=seed, progress=progress)
        sq8 = ops.sq8_train(x) if self.storage == "sq8" else None
        return _State(base, self._empty_rows(), torch.empty(0, dtype=torch.int64), 0, sq8)

    def _encode(self, s: _State, x: torch.Tensor) -> torch.Tensor:
        if self.storage == "sq8":
            return ops.sq8_encode(x, *s.sq8)
        return x.to(STORAGES[self.storage][1])

    def _add_to(self, s: _State, x: torch.Tensor, ids) -> _State:
        n_rows = int(s.labels.shape[0])
        labels = new_ids(ids, x.shape[0], s.live)
        rows = torch.arange(n_rows, n_rows + x.shape[0], dtype=torch.int64)
        base = self.base._add_to(s.base, x, rows)
        return _State(base, torch.cat([_tensor(s.rows), self._encode(s, x)]), torch.cat([_tensor(s.labels), labels]),
                      s.live + x.shape[0], s.sq8)

    def _remove_from(self, s: _State, ids: torch.Tensor) -> tuple[_State, int]:
        labels = _tensor(s.labels)
        rows = torch.nonzero(torch.isin(labels, ids) & (labels >= 0))[:, 0]
        if not rows.numel():
            return s, 0
        base, n = self.base._remove_from(s.base, rows)
        kept = labels.clone()
        kept[rows] = -1
        return _State(base, s.rows, kept, s.live - int(rows.numel()), s.sq8), int(rows.numel())

    def _emptied(self, s: _State) -> _State:
        return _State(self.base._emptied(s.base), self._empty_rows(), torch.empty(0, dtype=torch.int64), 0, s.sq8)

    def _search_in(self, s: _State, q: torch.Tensor, k: int, *, k_factor: float | None = None, **base_params
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        kf = self.k_factor if k_factor is None else check_k_factor(k_factor)
        kc = max(k, math.ceil(k * kf))
        refine = ops.Refinement(_tensor(s.rows), kc, _tensor(s.labels), s.sq8)
        return self.base._refined(s.base, q, k, refine, self.metric, **base_params)

    def search(self, queries, k: int, *, k_factor: float | None = None, **base_params
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k], ids [Q, k]) by exact distance among the base's k * k_factor best (k_factor:
        default the index's); other keywords (nprobe, exact, ...) are the base's search parameters."""
        return super().search(queries, k, k_factor=k_factor, **base_params)

    def _tune(self, x: torch.Tensor, options: dict) -> dict:
        s = self._state
        report = self.base._tune(x, options)
        with self._lock:
            self._set_state(_State(self.base._state, s.rows, s.labels, s.live, s.sq8))
        return report

    def search_parameters(self) -> tuple[str, ...]:
        return ("k_factor", *self.base.search_parameters())

    def reconstruct(self, ids) -> torch.Tensor:
        """The stored vectors [n, d] of the given ids (decoded when fp16 / sq8)."""
        s = self._ready()
        from .base import as_ids

        want = as_ids(ids).reshape(-1)
        labels = _tensor(s.labels)
        order = torch.argsort(labels, stable=True)
        pos = torch.searchsorted(labels[order], want).clamp_max(max(len(labels) - 1, 0))
        found = labels[order][pos] == want if len(labels) else torch.zeros_like(want, dtype=torch.bool)
        if not bool(found.all()):
            raise KeyError(f"ids not in the index: {want[~found][:10].tolist()}")
        rows = _tensor(s.rows)[order[pos]]
        return ops.sq8_decode(rows, *s.sq8) if s.sq8 is not None else rows.to(torch.float32)

    # ------------------------------------------------------------------ persistence

    def _meta(self, s: _State) -> dict:
        return {"kind": self.kind, "d": self.d, "metric": self.metric, "storage": self.storage,
                "k_factor": self.k_factor, "ntotal": s.live, "rows": int(s.labels.shape[0]),
                "base": self.base._meta(s.base)}

    def _write(self, s: _State, w, prefix: str, progress) -> None:
        self.base._write(s.base, w, prefix + "base.", progress)
        w.add(prefix + "refine.vectors", np.asarray(_tensor(s.rows).numpy()))
        w.add(prefix + "refine.labels", np.asarray(s.labels))
        if s.sq8 is not None:
            w.add(prefix + "refine.vmin", s.sq8[0].numpy())
            w.add(prefix + "refine.scale", s.sq8[1].numpy())

    @classmethod
    def _schema(cls, f: IndexFile, meta: Meta, prefix: str) -> dict:
        from . import kind_of

        d, storage, rows = meta.int("d", 1, 1 << 20), meta.choice("storage", tuple(STORAGES)), meta.int("rows", 0)
        base_meta = meta.sub("base")
        schema = kind_of(f, base_meta)._schema(f, base_meta, prefix + "base.")
        schema.update({prefix + "refine.vectors": (STORAGES[storage][0], (rows, d)),
                       prefix + "refine.labels": ("<i8", (rows,))})
        if storage == "sq8":
            schema.update({prefix + "refine.vmin": ("<f4", (d,)), prefix + "refine.scale": ("<f4", (d,))})
        return schema

    @classmethod
    def _read(cls, f: IndexFile, meta: Meta, prefix: str) -> RefineIndex:
        from . import kind_of

        base_meta = meta.sub("base")
        base = kind_of(f, base_meta)._read(f, base_meta, prefix + "base.")
        storage, metric = meta.choice("storage", tuple(STORAGES)), meta.choice("metric", ("l2", "ip"))
        if meta.int("d", 1, 1 << 20) != base.d or metric != base.metric:
            raise IndexFileError(f"{f.path}: meta fields 'd' / 'metric' differ from the base index's")
        base_state = base._state
        base._state = base._emptied(base_state)  # the constructor wants an empty base; the state comes back below
        index = cls(base, storage, k_factor=meta.number("k_factor", 1.0, 1e6))
        vectors, labels = f.array(prefix + "refine.vectors"), f.array(prefix + "refine.labels")
        live = meta.int("ntotal", 0)
        if f.verifies or not f.mmap:  # the labels are read anyway: count the live rows
            if int((np.asarray(labels) >= 0).sum()) != live:
                raise IndexFileError(f"{f.path}: meta field {meta.name('ntotal')} differs from the live rows of "
                                     f"{prefix + 'refine.labels'!r}")
        if f.verifies:
            verified_ids(f, np.asarray(labels)[np.asarray(labels) >= 0], prefix + "refine.labels")
        if base._count(base_state) != live:
            raise IndexFileError(f"{f.path}: the base index holds {base._count(base_state)} entries, the refinement "
                                 f"{live} live rows")
        sq8 = None
        if storage == "sq8":
            sq8 = (finite_section(f, f.array(prefix + "refine.vmin"), prefix + "refine.vmin"),
                   finite_section(f, f.array(prefix + "refine.scale"), prefix + "refine.scale"))
        wrap = (lambda a: a) if f.mmap else torch.from_numpy
        index._set_state(_State(base_state, wrap(vectors), wrap(labels), live, sq8, f if f.mmap else None))
        index.readonly = base.readonly = f.mmap
        return index
