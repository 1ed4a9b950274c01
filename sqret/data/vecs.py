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
    dim = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    item = np.dtype(dtype).itemsize
    row = 4 + dim * item
    if dim <= 0 or size % row:
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


def read_vectors(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Any of .fvecs / .bvecs / .ivecs / .npy by file suffix."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r" if mmap else None)
    if path.suffix not in _KINDS:
        raise ValueError(f"{path}: unknown vector file type (expected .fvecs, .bvecs, .ivecs or .npy)")
    return _read(path, _KINDS[path.suffix], mmap)
