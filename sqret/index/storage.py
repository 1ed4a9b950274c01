"""The sqret index file format: versioned, checksummed sections, atomic writes, memory-mappable arrays.

Layout (little-endian)::

    offset 0   magic   8 bytes  b"SQRETIDX"
           8   version uint32   FORMAT_VERSION
          12   flags   uint32   0
          16   dir_off uint64   offset of the directory
          24   dir_len uint64   its length in bytes
          32   dir_crc uint32   CRC-32 of the directory
          64   sections, each aligned to 64 bytes (raw C-order arrays)
     dir_off   directory: UTF-8 JSON {"meta": {...}, "sections": {name: {dtype, shape, offset, nbytes, crc32}}}

Sections are written as they stream in (no need to hold an index in memory), then the directory, then the
header is patched; the file is written under a temporary name, fsync'ed and renamed, so a crash mid-save
never leaves a broken index under the final name. Every section carries a CRC-32.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"SQRETIDX"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQI")  # magic, version, flags, dir_off, dir_len, dir_crc
_DATA_START = 64
_ALIGN = 64
_CRC_CHUNK = 1 << 24


class IndexFileError(ValueError):
    """The file is not a sqret index, is truncated or corrupted, or has an unsupported version."""


def _crc(data: memoryview | bytes | np.ndarray, crc: int = 0) -> int:
    mv = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) if isinstance(data, np.ndarray) else data
    for a in range(0, len(mv), _CRC_CHUNK):
        crc = zlib.crc32(mv[a : a + _CRC_CHUNK], crc)
    return crc


class IndexWriter:
    """Write an index file section by section; use as a context manager (commits on success).

    ``add(name, array)`` writes a whole array; ``begin(name, dtype, tail_shape)`` + ``extend(name, chunk)``
    stream one (e.g. a billion codes, chunk by chunk).
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * _DATA_START)
        self.sections: dict[str, dict[str, Any]] = {}
        self._open: str | None = None

    def _align(self) -> None:
        pad = (-self.f.tell()) % _ALIGN
        self.f.write(b"\0" * pad)

    def begin(self, name: str, dtype: np.dtype | str, tail_shape: tuple[int, ...] = ()) -> None:
        if name in self.sections:
            raise ValueError(f"section {name!r} written twice")
        self._align()
        self.sections[name] = {
            "dtype": np.dtype(dtype).str,
            "shape": [0, *tail_shape],
            "offset": self.f.tell(),
            "nbytes": 0,
            "crc32": 0,
        }
        self._open = name

    def extend(self, name: str, chunk: np.ndarray) -> None:
        s = self.sections[name]
        if self._open != name:
            raise ValueError(f"section {name!r} is not the one being written")
        arr = np.ascontiguousarray(chunk, dtype=np.dtype(s["dtype"]))
        if list(arr.shape[1:]) != s["shape"][1:]:
            raise ValueError(f"section {name!r}: chunk shape {arr.shape} does not extend {s['shape']}")
        if arr.size:
            flat = memoryview(arr.reshape(-1).view(np.uint8))
            self.f.write(flat)
            s["crc32"] = _crc(flat, s["crc32"])
        s["shape"][0] += arr.shape[0]
        s["nbytes"] += arr.nbytes

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(f"section {name!r}: store scalars in meta, not as sections")
        self.begin(name, array.dtype, array.shape[1:])
        self.extend(name, array)

    def commit(self) -> None:
        self._open = None
        self._align()
        directory = json.dumps({"meta": self.meta, "sections": self.sections}).encode()
        dir_off = self.f.tell()
        self.f.write(directory)
        self.f.seek(0)
        self.f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, 0, dir_off, len(directory), _crc(directory)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_index(path: str | Path, meta: dict[str, Any], sections: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write whole arrays as an index file, atomically."""
    with IndexWriter(path, meta) as w:
        for name, arr in sections:
            w.add(name, arr)


class IndexFile:
    """A read index file: ``meta`` and arrays by section name (memory-mapped when ``mmap=True``)."""

    def __init__(self, path: str | Path, mmap: bool = False, verify: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no index file at {self.path}")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:8] != MAGIC:
                raise IndexFileError(f"{self.path} is not a sqret index file (bad magic)")
            _, version, _, dir_off, dir_len, dir_crc = _HEADER.unpack(head)
            if version > FORMAT_VERSION:
                raise IndexFileError(
                    f"{self.path} has format version {version}; this sqret reads up to {FORMAT_VERSION}"
                )
            if dir_off == 0 or dir_off + dir_len > size:
                raise IndexFileError(f"{self.path} is truncated (its directory is missing)")
            f.seek(dir_off)
            directory = f.read(dir_len)
        if _crc(directory) != dir_crc:
            raise IndexFileError(f"{self.path} is corrupted (directory checksum mismatch)")
        doc = json.loads(directory)
        self.meta: dict[str, Any] = doc["meta"]
        self.sections: dict[str, dict[str, Any]] = doc["sections"]
        for name, s in self.sections.items():
            if s["offset"] + s["nbytes"] > dir_off:
                raise IndexFileError(f"{self.path} is truncated or corrupted (section {name!r} out of range)")
        self.mmap = mmap
        self._verify = verify
        self._raw = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None

    def array(self, name: str, verify: bool | None = None) -> np.ndarray:
        """Section ``name`` as an array (a read-only memory map when opened with ``mmap=True``)."""
        if name not in self.sections:
            raise IndexFileError(f"{self.path} has no section {name!r}")
        s = self.sections[name]
        raw = self._raw[s["offset"] : s["offset"] + s["nbytes"]]
        if self._verify if verify is None else verify:
            if _crc(raw) != s["crc32"]:
                raise IndexFileError(f"{self.path} is corrupted (section {name!r} checksum mismatch)")
        arr = raw.view(np.dtype(s["dtype"]))
        arr = arr.reshape(tuple(s["shape"]))
        return arr if self.mmap else np.array(arr)
