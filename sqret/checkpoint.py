"""Training checkpoints that no file can turn into code, and that notice corruption.

A checkpoint is ``torch.save`` of ``{"format": "sqret-checkpoint", "version", "state", "sha256"}`` where
``state`` holds only tensors and plain data (dict, list, tuple, str, int, float, bool, None), so it loads
with ``torch.load(weights_only=True)``: a pickle that names any other object is refused, nothing is
executed. ``sha256`` is a digest of the state's content (keys, values, each tensor's dtype, shape and bytes),
checked on load: a flipped byte is a :class:`CheckpointError`, never a silently different model.
Writes are atomic (a temporary unique to the call, fsync, rename).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import fsync_dir, remove_stale_temporaries, temporary_name

FORMAT = "sqret-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """Not a sqret checkpoint, corrupted, holding objects other than tensors and plain data, or of another
    method / code length / backbone than asked for."""


def _update(h, obj: Any) -> None:
    if obj is None or isinstance(obj, bool):
        h.update(b"N" if obj is None else (b"T" if obj else b"F"))
    elif isinstance(obj, int):
        h.update(b"i" + str(obj).encode() + b";")
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s" + str(len(b)).encode() + b":" + b)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"b" + str(len(obj)).encode() + b":" + bytes(obj))
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(b"t" + str(t.dtype).encode() + str(list(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"d" + str(len(obj)).encode() + b"{")
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _update(h, key)
            _update(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):  # torch.Size is a tuple
        h.update((b"l" if isinstance(obj, list) else b"u") + str(len(obj)).encode() + b"[")
        for v in obj:
            _update(h, v)
        h.update(b"]")
    elif isinstance(obj, torch.dtype):
        h.update(b"y" + str(obj).encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain data only, not {type(obj).__name__}")


def digest(state: Any) -> str:
    """SHA-256 (hex) of the content of ``state``: equal for equal content, whatever the device."""
    h = hashlib.sha256()
    _update(h, state)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` (tensors and plain data) atomically with its digest."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "state": state, "sha256": digest(state)}
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """The state of a checkpoint written by :func:`save_checkpoint`, its digest checked.

    ``FileNotFoundError`` when there is no file; :class:`CheckpointError` for anything else that is wrong."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable checkpoint (not a torch zip archive: corrupted, truncated "
                              "or another kind of file)")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickle opcodes: a corrupted file is reported below
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        what = next((ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln), "")
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain data, which could run "
                              f"code ({what[:160] or 'not a weights-only pickle'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError,
            AttributeError, TypeError, IndexError, struct.error) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupted or truncated? {first[:200]})") from None
    if type(obj) is not dict or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a sqret checkpoint (no {FORMAT!r} header: written by an older "
                              "sqret, or by something else)")
    version = obj.get("version")
    if type(version) is not int or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this sqret reads 1 to {VERSION}")
    state, want = obj.get("state"), obj.get("sha256")
    if type(state) is not dict or type(want) is not str:
        raise CheckpointError(f"{path} is corrupted (no state or no checksum)")
    try:
        got = digest(state)
    except TypeError as err:
        raise CheckpointError(f"{path} is corrupted ({err})") from None
    if got != want:
        raise CheckpointError(f"{path} is corrupted (checksum mismatch: its content is not what was saved)")
    return state


def spec_differences(saved: dict | None, wanted: dict | None) -> list[str]:
    """'key: checkpoint X, asked for Y' for each field where two method specs differ."""
    if not saved or not wanted:
        return []
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint {saved.get(k)!r}, asked for {wanted.get(k)!r}" for k in keys
            if saved.get(k) != wanted.get(k)]
