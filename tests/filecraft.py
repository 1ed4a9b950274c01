"""Crafting index files as a buggy or hostile writer would: edit the directory or the section bytes of a
saved index and write it back with every checksum recomputed, so only the schema checks stand in the way."""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

_HEADER = struct.Struct("<8sIIQQI")


def read(path: Path) -> tuple[bytearray, dict]:
    """(the file's bytes, its directory as a dict)."""
    raw = bytearray(Path(path).read_bytes())
    _, _, _, off, n, _ = _HEADER.unpack(raw[: _HEADER.size])
    return raw, json.loads(raw[off : off + n])


def write(path: Path, raw: bytearray, directory: dict | str | bytes, recompute: bool = True) -> None:
    """raw (sections as they are) with ``directory`` (a dict, or its JSON text as given) after the sections;
    section CRCs recomputed from the bytes when ``recompute`` (and the directory is a dict), the header's
    directory CRC always."""
    magic, version, flags, off, _, _ = _HEADER.unpack(raw[: _HEADER.size])
    body = bytearray(raw[:off])
    if isinstance(directory, dict):
        directory = copy.deepcopy(directory)
        if recompute:
            sections = directory.get("sections") if isinstance(directory, dict) else None
            for s in sections.values() if isinstance(sections, dict) else ():
                located = all(isinstance(s.get(k), int) for k in ("offset", "nbytes")) if isinstance(s, dict) else False
                if located and "crc32" in s:
                    a, b = s["offset"], s["offset"] + s["nbytes"]
                    if 0 <= a <= b <= len(body):
                        s["crc32"] = zlib.crc32(bytes(body[a:b]))
        text = json.dumps(directory).encode()
    else:
        text = directory.encode() if isinstance(directory, str) else directory
    body[: _HEADER.size] = _HEADER.pack(magic, version, flags, off, len(text), zlib.crc32(text))
    Path(path).write_bytes(bytes(body) + text)


def section_bytes(raw: bytearray, directory: dict, name: str) -> memoryview:
    s = directory["sections"][name]
    return memoryview(raw)[s["offset"] : s["offset"] + s["nbytes"]]


def run_isolated(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python code in a child process (where a crash is possible): a signal or a non-zero exit fails
    the calling test with the child's output."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    if out.returncode < 0:
        import signal

        raise AssertionError(f"child killed by {signal.Signals(-out.returncode).name}\n{out.stdout}\n{out.stderr}")
    assert out.returncode == 0, f"child exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def run_child_pytest(module: str, timeout: float = 900) -> str:
    """Run the pytest module tests/<module> in a child process; a signal or a failure fails the caller."""
    import signal

    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module], cwd=here,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode < 0:
        raise AssertionError(f"{module} was killed by {signal.Signals(-out.returncode).name}:\n"
                             f"{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1], out.stdout[-500:]
    return out.stdout
