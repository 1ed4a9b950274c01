"""Backend registry: which implementation of each op runs, on which device.

Every op has a ``reference`` implementation (plain PyTorch, any device). Faster backends (``triton``,
``cuda``, ``cpu_native``) register the ops they implement and the device types they run on. The choice is
automatic (highest priority among the available backends that implement the op for the tensor's device)
unless forced with :func:`set_backend`, the :func:`use_backend` context manager or ``SQRET_BACKEND``.

A forced backend runs every op it implements and must serve the tensor's device (otherwise a
``RuntimeError`` says why); ops it does not implement fall back to ``reference``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

KNOWN = ("reference", "triton", "cuda", "cpu_native")
AUTO = "auto"


@dataclass
class _Backend:
    name: str
    devices: tuple[str, ...] = ()
    impls: dict[str, Callable] = field(default_factory=dict)
    priority: int | dict[str, int] = 0  # per device type when a dict
    reason: str | None = "not part of this build yet"


@dataclass(frozen=True)
class BackendInfo:
    """What :func:`backends` reports for one backend."""

    name: str
    available: bool
    reason: str | None  # why it is unavailable; None when available
    devices: tuple[str, ...]
    ops: tuple[str, ...]


_registry: dict[str, _Backend] = {name: _Backend(name) for name in KNOWN}
_choice: dict[tuple[str, str], tuple[str, Callable]] = {}  # select()'s answers until the registry changes


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or name not in KNOWN + (AUTO,):
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(KNOWN + (AUTO,))}")
    return name


_forced: str = _check_name(os.environ.get("SQRET_BACKEND", AUTO) or AUTO, "SQRET_BACKEND")


def register(
    name: str, devices: tuple[str, ...], impls: dict[str, Callable], priority: int | dict[str, int]
) -> None:
    """Make backend ``name`` available for ``devices`` (device types; ``"*"`` for any) with ``impls``;
    the automatic choice takes the highest ``priority`` (an int, or one per device type)."""
    _check_name(name, "register")
    _registry[name] = _Backend(name, tuple(devices), dict(impls), priority, None)
    _choice.clear()


def mark_unavailable(name: str, reason: str) -> None:
    """Record why backend ``name`` cannot be used on this machine (reported by :func:`backends`)."""
    _check_name(name, "mark_unavailable")
    _registry[name] = _Backend(name, reason=reason)
    _choice.clear()


def backends() -> list[BackendInfo]:
    """Every known backend, whether it is available here, and if not, why."""
    return [
        BackendInfo(b.name, b.reason is None, b.reason, b.devices, tuple(sorted(b.impls)))
        for b in _registry.values()
    ]


def get_backend() -> str:
    """The forced backend's name, or ``"auto"``."""
    return _forced


def set_backend(name: str | None) -> None:
    """Force backend ``name`` for every op (``None`` or ``"auto"`` restores the automatic choice)."""
    global _forced
    name = _check_name(AUTO if name is None else name, "set_backend")
    if name != AUTO and _registry[name].reason is not None:
        raise RuntimeError(f"set_backend: backend {name!r} is unavailable: {_registry[name].reason}")
    _forced = name
    _choice.clear()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Context manager form of :func:`set_backend`; restores the previous choice on exit."""
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _serves(b: _Backend, device_type: str) -> bool:
    return device_type in b.devices or "*" in b.devices


def device_type(t) -> str:
    """t.device.type, without building a device object for CPU tensors (a quarter of a microsecond a call)."""
    return "cpu" if t.is_cpu else t.device.type


def select(op: str, device_type: str) -> tuple[str, Callable]:
    """The backend name and implementation that run ``op`` on ``device_type`` now."""
    found = _choice.get((op, device_type))
    if found is None:
        found = _choice[(op, device_type)] = _select(op, device_type)
    return found


def _select(op: str, device_type: str) -> tuple[str, Callable]:
    if _forced != AUTO:
        b = _registry[_forced]
        if b.reason is not None:
            raise RuntimeError(f"backend {b.name!r} is forced but unavailable: {b.reason}")
        if not _serves(b, device_type):
            raise RuntimeError(
                f"backend {b.name!r} is forced but does not run on {device_type} tensors "
                f"(it runs on: {', '.join(b.devices) or 'nothing'})"
            )
        if op in b.impls:
            return b.name, b.impls[op]
        ref = _registry["reference"]
        return ref.name, ref.impls[op]
    candidates = [
        b for b in _registry.values() if b.reason is None and _serves(b, device_type) and op in b.impls
    ]
    if not candidates:
        raise RuntimeError(f"no backend implements {op!r} on {device_type} tensors")
    best = max(candidates, key=lambda b: _priority(b, device_type))
    return best.name, best.impls[op]


def _priority(b: _Backend, device_type: str) -> int:
    return b.priority.get(device_type, 0) if isinstance(b.priority, dict) else b.priority
