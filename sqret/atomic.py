"""Atomic file replacement: a temporary unique to the call beside the target, fsync, rename (the only
commit), the folder fsync'ed; temporaries left by dead processes (a kill -9 mid-write) are removed."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

TMP_MARK = ".tmp-"
_counter = itertools.count()


def temporary_name(path: Path) -> Path:
    """``.NAME.tmp-PID-THREAD-N-RANDOM`` beside path: unique per call, across threads and processes."""
    unique = f"{os.getpid()}-{threading.get_ident()}-{next(_counter)}-{os.urandom(4).hex()}"
    return path.with_name(f".{path.name}{TMP_MARK}{unique}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.tmp-PID...`` files beside path whose process PID no longer runs."""
    prefix = f".{path.name}{TMP_MARK}"
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        if not e.name.startswith(prefix):
            continue
        pid = e.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(e.path)
            except OSError:
                pass


def fsync_dir(path: Path) -> None:
    """Make a rename in path's folder durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
