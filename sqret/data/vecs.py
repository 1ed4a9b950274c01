"""Readers for TEXMEX vector files (memory-mapped): per vector an int32 dimension, then its values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_KINDS = {".fvecs": np.float32, ".bvecs": np.uint8, ".ivecs": np.int32}


def _read(path: str | Path, dtype: np.dtype, mmap: bool) -> np.ndarray:
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return np.zeros((0, 0), dtype=dtype)
    if size < 4:
        raise ValueError(f"{path}: not a {path.suffix or 'vecs'} file ({size} bytes)")
    dim = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    item = np.dtype(dtype).itemsize
    row = 4 + dim * item
    if dim <= 0 or dim > 1 << 24 or size % row:
        raise ValueError(f"{path}: not a {path.suffix or 'vecs'} file (dimension {dim}, {size} bytes)")
    n = size // row
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, row))
    dims = raw[:, :4].copy().view(np.int32)[:, 0]
    if not np.all(dims == dim):
        raise ValueError(f"{path}: vectors of different dimensions ({sorted(set(dims.tolist()))[:5]})")
    vecs = raw[:, 4:].view(dtype)  # [n, dim], a strided view of the memmap
    return vecs if mmap else np.ascontiguousarray(vecs)


def read_fvecs(path: str | Path, mmap: bool = False) -> np.ndarray:
    """float32 [n, dim] from a .fvecs file."""
    return _read(path, np.float32, mmap)


def read_bvecs(path: str | Path, mmap: bool = False) -> np.ndarray:
    """uint8 [n, dim] from a .bvecs file."""
    return _read(path, np.uint8, mmap)


def read_ivecs(path: str | Path, mmap: bool = False) -> np.ndarray:
    """int32 [n, dim] from an .ivecs file (e.g. ground-truth neighbour ids)."""
    return _read(path, np.int32, mmap)


def read_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """A 2-D numeric array [n, dim] from a .npy file (no pickled objects)."""
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:  # a pickled object array, or not a .npy file at all
        raise ValueError(f"{path}: not a numeric .npy array ({str(err).splitlines()[0]})") from None
    except EOFError:
        raise ValueError(f"{path}: not a .npy file (empty or truncated)") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{path}: not a single .npy array")
    if a.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array [n, dim], got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected numbers, got dtype {a.dtype}")
    return a


def read_vectors(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Any of .fvecs / .bvecs / .ivecs / .npy by file suffix: [n, dim]."""
    path = Path(path)
    if path.suffix == ".npy":
        return read_npy(path, mmap)
    if path.suffix not in _KINDS:
        raise ValueError(f"{path}: unknown vector file type (expected .fvecs, .bvecs, .ivecs or .npy)")
    return _read(path, _KINDS[path.suffix], mmap)
