"""Backend registry: the one place that chooses which implementation of an op runs.

Every op has a ``reference`` implementation (plain PyTorch, any device). Other backends (``triton``, ``cuda``,
``cpu_native``, or any name passed to :func:`register`) register the ops they implement, the device types they
run on and, per op, what they accept: an :class:`Impl` whose ``accepts(*args)`` returns the reason it declines
those arguments (``None``: it runs them). Declining is the only way a backend hands a call on; no backend calls
another's implementation.

The choice for one call (:func:`choose`; :func:`explain` reports it with every reason):

- **forced** (:func:`use_backend` in the current thread / task, else :func:`set_backend` or ``SQRET_BACKEND`` for
  the process): that backend, which must serve the tensor's device (otherwise a ``RuntimeError`` says why), if it
  implements the op and accepts the arguments; ``reference`` otherwise;
- **automatic**: an op's policy (:func:`set_policy`, e.g. the measured CUDA-vs-Triton winner per soft-quantization
  shape) may name the backend to try first; then the available backends serving the device, highest priority
  first; the first that accepts runs; ``reference`` accepts everything.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

BUILTIN = ("reference", "triton", "cuda", "cpu_native")
AUTO = "auto"


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op; ``accepts(*args)`` (the op's arguments) returns why it declines
    them, or ``None`` to run them; no ``accepts``: it runs everything its device serves."""

    fn: Callable
    accepts: Callable[..., str | None] | None = None


@dataclass
class _Backend:
    name: str
    devices: tuple[str, ...] = ()
    impls: dict[str, Impl] = field(default_factory=dict)
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


@dataclass(frozen=True)
class Choice:
    """What :func:`explain` reports: the backend that runs ``op`` on these arguments and why each other did not."""

    op: str
    device: str
    forced: str
    backend: str
    reasons: tuple[tuple[str, str], ...]  # (backend, why it does not run this call), in the order considered

    def __str__(self) -> str:
        how = f"forced {self.forced!r}" if self.forced != AUTO else "automatic choice"
        lines = [f"{self.op} on {self.device} tensors ({how}): {self.backend} runs it"]
        lines += [f"  {name}: {why}" for name, why in self.reasons]
        return "\n".join(lines)


_registry: dict[str, _Backend] = {name: _Backend(name) for name in BUILTIN}
_policies: dict[str, Callable[..., str | None]] = {}
_order: dict[tuple[str, str, str], tuple[tuple[str, Impl], ...]] = {}  # candidates until the registry changes


def _check_name(name: str, where: str, *, known: bool = True) -> str:
    names = tuple(_registry) + (AUTO,)
    if not isinstance(name, str) or not name or (known and name not in names):
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(names)}")
    return name


_process: str = _check_name(os.environ.get("SQRET_BACKEND", AUTO) or AUTO, "SQRET_BACKEND")
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("sqret_backend", default=None)


def declines_float64(*tensors) -> str | None:
    """The reason every accelerated backend gives for float64 inputs (their kernels compute in float32)."""
    for t in tensors:  # a loop, not any(...): this runs in every one-query search
        if t.dtype is torch.float64:
            return "float64 inputs: float64 results are the reference's"
    return None


def _impl(v: Callable | Impl) -> Impl:
    return v if isinstance(v, Impl) else Impl(v)


def register(
    name: str, devices: tuple[str, ...], impls: dict[str, Callable | Impl], priority: int | dict[str, int]
) -> None:
    """Make backend ``name`` (a built-in or a new one) available for ``devices`` (device types; ``"*"`` for any)
    with ``impls`` (op name -> function or :class:`Impl`); the automatic choice tries higher ``priority`` (an
    int, or one per device type) first."""
    _check_name(name, "register", known=False)
    _registry[name] = _Backend(name, tuple(devices), {op: _impl(v) for op, v in impls.items()}, priority, None)
    _order.clear()


def mark_unavailable(name: str, reason: str) -> None:
    """Record why backend ``name`` cannot be used on this machine (reported by :func:`backends`)."""
    _check_name(name, "mark_unavailable", known=False)
    _registry[name] = _Backend(name, reason=reason)
    _order.clear()


def set_policy(op: str, prefer: Callable[..., str | None] | None) -> None:
    """``prefer(*args)`` names the backend the automatic choice tries first for ``op`` (``None``: priority
    order); ``prefer=None`` removes the policy. A forced backend ignores policies."""
    if prefer is None:
        _policies.pop(op, None)
    else:
        _policies[op] = prefer


def backends() -> list[BackendInfo]:
    """Every known backend, whether it is available here, and if not, why."""
    return [
        BackendInfo(b.name, b.reason is None, b.reason, b.devices, tuple(sorted(b.impls)))
        for b in _registry.values()
    ]


def get_backend() -> str:
    """The forced backend's name in this context (a :func:`use_backend` block, else the process's), or ``"auto"``."""
    return _context.get() or _process


def _forceable(name: str | None, where: str) -> str:
    name = _check_name(AUTO if name is None else name, where)
    if name != AUTO and _registry[name].reason is not None:
        raise RuntimeError(f"{where}: backend {name!r} is unavailable: {_registry[name].reason}")
    return name


def set_backend(name: str | None) -> None:
    """Force backend ``name`` for every op in the process (``None`` or ``"auto"`` restores the automatic
    choice); a :func:`use_backend` block in force takes precedence in its thread / task."""
    global _process
    _process = _forceable(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force backend ``name`` (``None``: the automatic choice) inside the block, in this thread / asyncio task
    only (a context variable): other threads keep their own choice."""
    token = _context.set(_forceable(name, "use_backend"))
    try:
        yield
    finally:
        _context.reset(token)


def _serves(b: _Backend, device_type: str) -> bool:
    return device_type in b.devices or "*" in b.devices


def device_type(t) -> str:
    """t.device.type, without building a device object for CPU tensors (a quarter of a microsecond a call)."""
    return "cpu" if t.is_cpu else t.device.type


def _candidates(op: str, device_type: str, forced: str) -> tuple[tuple[str, Impl], ...]:
    """The backends that may run ``op`` on ``device_type``, in the order they are asked; ``reference`` last."""
    key = (op, device_type, forced)
    found = _order.get(key)
    if found is None:
        found = _order[key] = _compute_candidates(op, device_type, forced)
    return found


def _compute_candidates(op: str, device_type: str, forced: str) -> tuple[tuple[str, Impl], ...]:
    ref = _registry["reference"]
    if op not in ref.impls:
        raise RuntimeError(f"no backend implements {op!r} (the reference does not define it)")
    if forced != AUTO:
        b = _registry[forced]
        if b.reason is not None:
            raise RuntimeError(f"backend {b.name!r} is forced but unavailable: {b.reason}")
        if not _serves(b, device_type):
            raise RuntimeError(
                f"backend {b.name!r} is forced but does not run on {device_type} tensors "
                f"(it runs on: {', '.join(b.devices) or 'nothing'})"
            )
        chosen = [b] if op in b.impls and b is not ref else []
    else:  # by priority; those below the reference's (the Triton interpreter on CPU) are never reached
        ranked = sorted(
            (b for b in _registry.values() if b.reason is None and _serves(b, device_type) and op in b.impls),
            key=lambda b: -_priority(b, device_type),
        )
        chosen = ranked[: ranked.index(ref)]
    return tuple((b.name, b.impls[op]) for b in chosen) + (("reference", ref.impls[op]),)


def _priority(b: _Backend, device_type: str) -> int:
    return b.priority.get(device_type, 0) if isinstance(b.priority, dict) else b.priority


def _ordered(op: str, device_type: str, args: tuple) -> tuple[str, tuple[tuple[str, Impl], ...]]:
    forced = _context.get() or _process
    cands = _candidates(op, device_type, forced)
    policy = _policies.get(op) if forced == AUTO else None
    if policy is not None and len(cands) > 2:
        first = policy(*args)
        cands = tuple(sorted(cands[:-1], key=lambda c: c[0] != first)) + cands[-1:]
    return forced, cands


def choose(op: str, device_type: str, args: tuple) -> tuple[str, Callable]:
    """The backend name and function that run ``op`` on ``args`` (tensors of ``device_type``) now."""
    _, cands = _ordered(op, device_type, args)
    for name, impl in cands:
        if impl.accepts is None or impl.accepts(*args) is None:
            return name, impl.fn
    raise AssertionError("unreachable: the reference accepts every call")


def run(op: str, device_type: str, *args):
    """Run ``op`` on ``args`` with the implementation :func:`choose` picks."""
    return choose(op, device_type, args)[1](*args)


def explain(op: str, *args, device: str | None = None) -> Choice:
    """Which backend would run ``op`` on these arguments (the backend-level arguments of the op, e.g.
    ``explain("adc_topk", lut, codes, k, largest, packed)``) and why every other would not. The device is the
    first tensor's unless given."""
    if device is None:
        device = next((device_type(a) for a in args if hasattr(a, "is_cpu")), "cpu")
    forced, cands = _ordered(op, device, args)
    reasons: list[tuple[str, str]] = []
    listed = {name for name, _ in cands}
    for b in _registry.values():
        if b.name in listed:
            continue
        if forced == AUTO and b.reason is None and _serves(b, device) and op in b.impls:
            why = "ranks below the reference (never chosen automatically: force it with use_backend)"
        elif forced != AUTO:
            why = f"not forced (the forced backend is {forced!r})" if b.name != forced else f"does not implement {op}"
        elif b.reason is not None:
            why = f"unavailable: {b.reason}"
        elif not _serves(b, device):
            why = f"does not run on {device} tensors"
        elif op not in b.impls:
            why = f"does not implement {op}"
        else:
            why = "not chosen"
        reasons.append((b.name, why))
    for j, (name, impl) in enumerate(cands):
        why = impl.accepts(*args) if impl.accepts is not None else None
        if why is None:
            reasons += [(later, f"comes after {name}") for later, _ in cands[j + 1:]]
            return Choice(op, device, forced, name, tuple(reasons))
        reasons.append((name, f"declines: {why}"))
    raise AssertionError("unreachable: the reference accepts every call")


def select(op: str, device_type: str) -> tuple[str, Callable]:
    """The backend that would run ``op`` on ``device_type`` for arguments it accepts (ignores ``accepts`` and
    policies: :func:`choose` decides a call)."""
    name, impl = _candidates(op, device_type, _context.get() or _process)[0]
    return name, impl.fn


def direct(op: str, impl: Callable) -> Callable:
    """The function to call for custom op ``sqret::op`` whose real kernel is ``impl``: in eager mode the
    non-differentiable ops skip the dispatcher (tens of microseconds a call) and run ``impl``; under
    ``torch.compile`` the registered op is traced."""
    return getattr(torch.ops.sqret, op) if torch.compiler.is_compiling() else impl
