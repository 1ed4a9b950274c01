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
header is patched; the file is written under a temporary name unique to the call, fsync'ed and renamed (the
rename is the only commit), so a crash mid-save never leaves a broken index under the final name, and two
saves to one path leave one of them whole. Temporaries of dead processes are removed by the next save.

Reading (:class:`IndexFile`) checks the header and the directory's structure (every section's dtype, shape,
size, alignment, bounds, no overlaps); each index kind then checks the sections against its schema
(:meth:`IndexFile.expect`) and its meta fields (:class:`Meta`). Anything wrong is an :class:`IndexFileError`
naming the field. With ``mmap=True`` the arrays map the file; :meth:`IndexFile.check_unchanged` (run by the
indexes before each scan) raises an :class:`IndexFileError` when the file was truncated or rewritten since.
"""

from __future__ import annotations

import itertools
import json
import mmap as _mmap
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import fsync_dir, remove_stale_temporaries, temporary_name

MAGIC = b"SQRETIDX"
FORMAT_VERSION = 2  # 2: every meta field written (1: the scoring / layout fields absent, read as their defaults)
_HEADER = struct.Struct("<8sIIQQI")  # magic, version, flags, dir_off, dir_len, dir_crc
_DATA_START = 64
_ALIGN = 64
_CRC_CHUNK = 1 << 24
MAX_DIRECTORY_BYTES = 64 << 20
# dtypes a section may declare (the kind's schema then requires one exactly)
_DTYPES = frozenset(np.dtype(t).str for t in ("<f4", "<f2", "<f8", "u1", "i1", "<i2", "<u2", "<i4", "<u4",
                                               "<i8", "<u8", "<c8"))


class IndexFileError(ValueError):
    """The file is not a sqret index, is truncated or corrupted, does not match its kind's schema, has an
    unsupported version, or changed on disk while memory-mapped."""


def _crc(data: memoryview | bytes | np.ndarray, crc: int = 0) -> int:
    mv = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) if isinstance(data, np.ndarray) else data
    for a in range(0, len(mv), _CRC_CHUNK):
        crc = zlib.crc32(mv[a : a + _CRC_CHUNK], crc)
    return crc


# ---------------------------------------------------------------------------------------------- writing

class IndexWriter:
    """Write an index file section by section; use as a context manager (commits on success, leaves nothing
    behind on an exception).

    ``add(name, array)`` writes a whole array; ``begin(name, dtype, tail_shape)`` + ``extend(name, chunk)``
    stream one (e.g. a billion codes, chunk by chunk).
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]):
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory")
        self.meta = meta
        remove_stale_temporaries(self.path)
        self.tmp = temporary_name(self.path)
        self.f = open(self.tmp, "xb")
        try:
            self.f.write(b"\0" * _DATA_START)
        except BaseException:
            self.abort()
            raise
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
        try:
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
            os.replace(self.tmp, self.path)  # the commit: atomic, the file is whole under either name
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path)

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


# ---------------------------------------------------------------------------------------------- reading


def _is_int(v: object) -> bool:
    return type(v) is int


class Meta:
    """Typed access to a file's meta fields: each getter raises :class:`IndexFileError` naming the field
    (``base.M`` for the field M of a nested object ``base``)."""

    def __init__(self, path: Path, meta: dict[str, Any], where: str = "", version: int = FORMAT_VERSION):
        self.path, self.raw, self.where, self.version = path, meta, where, version

    def name(self, key: str) -> str:
        return repr(self.where + key)

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} is missing")
        return self.raw[key]

    def int(self, key: str, lo: int = 0, hi: int = 1 << 62) -> int:
        v = self._get(key)
        if not _is_int(v) or not lo <= v <= hi:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} must be an int in [{lo}, {hi}], got {v!r}")
        return v

    def number(self, key: str, lo: float, hi: float) -> float:
        v = self._get(key)
        if type(v) not in (int, float) or not lo <= v <= hi:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} must be a number in [{lo}, {hi}], "
                                 f"got {v!r}")
        return float(v)

    def flag(self, key: str, default: bool | None = None) -> bool:
        """A true / false field; ``default`` is what files of format version 1 (which lack it) mean."""
        if key not in self.raw and default is not None and self.version < 2:
            return default
        v = self._get(key)
        if type(v) is not bool:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} must be true or false, got {v!r}")
        return v

    def choice(self, key: str, options: tuple) -> Any:
        v = self._get(key)
        if type(v) not in (str, int) or v not in options:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} must be one of {options}, got {v!r}")
        return v

    def sub(self, key: str) -> Meta:
        """The nested object ``key`` (a composite's base index)."""
        v = self._get(key)
        if type(v) is not dict:
            raise IndexFileError(f"{self.path}: meta field {self.name(key)} must be an object, got {type(v).__name__}")
        return Meta(self.path, v, f"{self.where}{key}.", self.version)


class IndexFile:
    """A read index file: ``meta`` and arrays by section name (read-only memory maps when ``mmap=True``).

    Raises :class:`IndexFileError` for a file that is not a well-formed sqret index (``FileNotFoundError``
    when there is no file). ``verify`` checks each section's CRC-32 as it is read.
    """

    def __init__(self, path: str | Path, mmap: bool = False, verify: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise IndexFileError(f"{self.path} is a directory, not an index file")
        if not self.path.is_file():
            raise FileNotFoundError(f"no index file at {self.path}")
        self.mmap, self.verifies = mmap, verify
        self._file = open(self.path, "rb")
        try:
            self._stat = os.fstat(self._file.fileno())
            self._read_directory()
            self._map = None
            if mmap and self._stat.st_size:
                self._map = _mmap.mmap(self._file.fileno(), 0, access=_mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise
        if not mmap:
            self._file.close()

    def _fail(self, what: str) -> IndexFileError:
        return IndexFileError(f"{self.path}: {what}")

    def _read_directory(self) -> None:
        size = self._stat.st_size
        head = os.pread(self._file.fileno(), _HEADER.size, 0)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            raise IndexFileError(f"{self.path} is not a sqret index file (bad magic)")
        _, version, _, dir_off, dir_len, dir_crc = _HEADER.unpack(head)
        self.version = version
        if version > FORMAT_VERSION or version < 1:
            raise IndexFileError(f"{self.path} has format version {version}; this sqret reads 1 to {FORMAT_VERSION}")
        if dir_off < _DATA_START or dir_off + dir_len > size:
            raise IndexFileError(f"{self.path} is truncated (its directory is missing)")
        if dir_len > MAX_DIRECTORY_BYTES:
            raise self._fail(f"directory of {dir_len} bytes is larger than {MAX_DIRECTORY_BYTES}")
        directory = os.pread(self._file.fileno(), dir_len, dir_off)
        if len(directory) != dir_len:
            raise IndexFileError(f"{self.path} is truncated (its directory is missing)")
        if _crc(directory) != dir_crc:
            raise IndexFileError(f"{self.path} is corrupted (directory checksum mismatch)")
        try:
            doc = json.loads(directory.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise self._fail(f"directory is not valid JSON ({type(err).__name__})") from None
        if type(doc) is not dict or set(doc) != {"meta", "sections"}:
            raise self._fail("directory must be an object with exactly 'meta' and 'sections'")
        if type(doc["meta"]) is not dict:
            raise self._fail(f"'meta' must be an object, got {type(doc['meta']).__name__}")
        if type(doc["sections"]) is not dict:
            raise self._fail(f"'sections' must be an object, got {type(doc['sections']).__name__}")
        self.meta: dict[str, Any] = doc["meta"]
        self.sections: dict[str, dict[str, Any]] = {}
        for name, s in doc["sections"].items():
            self.sections[name] = self._section(name, s, dir_off)
        spans = sorted((s["offset"], s["offset"] + s["nbytes"], n) for n, s in self.sections.items())
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise self._fail(f"sections {a!r} and {b!r} overlap")

    def _section(self, name: str, s: object, dir_off: int) -> dict[str, Any]:
        where = f"section {name!r}"
        keys = {"dtype", "shape", "offset", "nbytes", "crc32"}
        if type(s) is not dict or set(s) != keys:
            raise self._fail(f"{where} must be an object with exactly {sorted(keys)}")
        dt, shape, off, nbytes, crc = (s[k] for k in ("dtype", "shape", "offset", "nbytes", "crc32"))
        if type(dt) is not str or dt not in _DTYPES:
            raise self._fail(f"{where}: unsupported dtype {dt!r}")
        if type(shape) is not list or len(shape) > 8 or not all(_is_int(v) and v >= 0 for v in shape):
            raise self._fail(f"{where}: shape must be a list of at most 8 ints >= 0, got {shape!r}")
        if not all(_is_int(v) for v in (off, nbytes, crc)) or not 0 <= crc < 1 << 32:
            raise self._fail(f"{where}: offset, nbytes and crc32 must be ints")
        want = int(np.prod(shape, dtype=object)) * np.dtype(dt).itemsize if shape else 0
        if nbytes != want:
            raise self._fail(f"{where}: nbytes = {nbytes} but shape {shape} of {dt} needs {want}")
        if off < _DATA_START or off % _ALIGN or off + nbytes > dir_off:
            raise IndexFileError(f"{self.path} is truncated or corrupted ({where} out of range)")
        return {"dtype": dt, "shape": tuple(shape), "offset": off, "nbytes": nbytes, "crc32": crc}

    def meta_reader(self) -> Meta:
        return Meta(self.path, self.meta, version=self.version)

    def expect(self, schema: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        """The sections must be exactly ``schema``'s: name -> (dtype string as numpy spells it, shape)."""
        have, want = set(self.sections), set(schema)
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            raise self._fail("sections do not match the index kind"
                             + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
        for name, (dtype, shape) in schema.items():
            s = self.sections[name]
            if s["dtype"] != np.dtype(dtype).str:
                raise self._fail(f"section {name!r} must have dtype {np.dtype(dtype).str}, got {s['dtype']}")
            if s["shape"] != tuple(shape):
                raise self._fail(f"section {name!r} must have shape {list(shape)}, got {list(s['shape'])}")

    def array(self, name: str, verify: bool | None = None) -> np.ndarray:
        """Section ``name`` as an array (a read-only memory map when opened with ``mmap=True``)."""
        if name not in self.sections:
            raise self._fail(f"has no section {name!r}")
        s = self.sections[name]
        dtype = np.dtype(s["dtype"])
        if self.mmap:
            raw = np.frombuffer(self._map, np.uint8, s["nbytes"], s["offset"]) if s["nbytes"] else np.empty(0, np.uint8)
        else:
            raw = self._read(s["offset"], s["nbytes"])
        if self.verifies if verify is None else verify:
            if _crc(raw) != s["crc32"]:
                raise IndexFileError(f"{self.path} is corrupted (section {name!r} checksum mismatch)")
        return raw.view(dtype).reshape(s["shape"])

    def _read(self, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes) read into memory (a file shortened meanwhile is an error, not SIGBUS)."""
        buf = np.empty(nbytes, np.uint8)
        view, done = memoryview(buf), 0
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_ino != self._stat.st_ino:
                raise self._fail("was replaced while it was being read")
            f.seek(offset)
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise IndexFileError(f"{self.path} is truncated (shortened while it was being read)")
                done += got
        return buf

    def check_unchanged(self) -> None:
        """For a memory-mapped file: raise IndexFileError if it was truncated or rewritten since it was opened
        (reading a truncated map would kill the process with SIGBUS). One fstat: cheap before each scan."""
        if not self.mmap:
            return
        st = os.fstat(self._file.fileno())
        if st.st_size != self._stat.st_size or st.st_mtime_ns != self._stat.st_mtime_ns:
            raise IndexFileError(
                f"{self.path} changed on disk since it was memory-mapped (size {self._stat.st_size} -> {st.st_size}"
                " bytes); searching it could read past its end: load it again")
