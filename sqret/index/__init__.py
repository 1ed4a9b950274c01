"""Indexes: PQIndex (flat PQ), IVFPQIndex (inverted lists + residual PQ), persistence, FAISS interop,
sharded search over torch.distributed."""

from __future__ import annotations

from pathlib import Path

from .base import Index
from .ivf import IVFPQIndex
from .pq import PQIndex
from .refine import RefineIndex
from .residual import ResidualIndex
from .storage import FORMAT_VERSION, IndexFile, IndexFileError
from .transform import PreTransformIndex

_KINDS = {"pq": PQIndex, "ivfpq": IVFPQIndex, "refine": RefineIndex, "pretransform": PreTransformIndex}


def load(path: str | Path, mmap: bool = False, verify: bool = True) -> PQIndex | IVFPQIndex:
    """Read an index written by ``save``. ``mmap=True`` maps the codes and ids instead of reading them (the
    index is then read-only and searched by streaming); ``verify`` checks every section's CRC-32 and the
    code and id ranges (a full read: pass False to open a huge memory-mapped index instantly)."""
    f = IndexFile(path, mmap=mmap, verify=verify)
    meta = f.meta_reader()
    cls = kind_of(f, meta)
    f.expect(cls._schema(f, meta, ""))
    return cls._read(f, meta, "")


def kind_of(f: IndexFile, meta) -> type:
    """The index class of a (possibly nested) meta object, by its 'kind' field."""
    kind = meta.raw.get("kind")
    if type(kind) is not str or kind not in _KINDS:
        raise IndexFileError(f"{f.path}: unknown index kind {kind!r} (meta field {meta.name('kind')})")
    return _KINDS[kind]


def _typed_load(cls):
    def load_as(path: str | Path, mmap: bool = False, verify: bool = True):
        index = load(path, mmap=mmap, verify=verify)
        if not isinstance(index, cls):
            raise IndexFileError(f"{path} holds a {type(index).__name__}, not a {cls.__name__}")
        return index

    return staticmethod(load_as)


for _cls in _KINDS.values():
    _cls.load = _typed_load(_cls)

from .factory import index_factory  # noqa: E402

__all__ = ["FORMAT_VERSION", "IVFPQIndex", "Index", "IndexFile", "IndexFileError", "PQIndex", "PreTransformIndex",
           "RefineIndex", "ResidualIndex", "index_factory", "load"]
