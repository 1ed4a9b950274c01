"""index_factory: FAISS's spelling for the indexes sqret implements.

    [transform,] base [,refine]
    transform  OPQ{M}[_{D}]  |  PCA{D}  |  PCAR{D}  |  RR{D}
    base       PQ{M}[x{nbits}][fs]  |  IVF{nlist},PQ{M}[x{nbits}][fs|fsr]
    refine     RFlat  |  Refine(Flat)  |  Refine(SQfp16)  |  Refine(SQ8)

nbits is 8 (default) or 4. ``fs`` on IVF is FAISS's IndexIVFPQFastScan, which encodes the vectors themselves
(by_residual false); ``fsr`` encodes the residuals. Flat 4-bit PQ always uses the fast scan on the CPU.
Search parameters are keywords of ``search``: ``nprobe`` (IVF), ``k_factor`` (refine), ``exact`` (4-bit).
"""

from __future__ import annotations

import re

from .base import Index, check_metric
from .ivf import IVFPQIndex
from .pq import PQIndex
from .refine import RefineIndex
from .transform import PreTransformIndex

_TRANSFORM = {"OPQ": "opq", "PCA": "pca", "PCAR": "pcar", "RR": "random"}
_REFINE = {"RFlat": "flat", "Refine(Flat)": "flat", "Refine(SQfp16)": "fp16", "Refine(SQ8)": "sq8"}
SUPPORTED = ("OPQ{M}[_{D}], PCA{D}, PCAR{D}, RR{D}; PQ{M}[x{4|8}][fs], IVF{nlist},PQ{M}[x{4|8}][fs|fsr]; "
             "RFlat, Refine(Flat|SQfp16|SQ8)")


def _error(spec: str, part: str, why: str = "") -> ValueError:
    return ValueError(f"index_factory: unsupported part {part!r} in {spec!r}{': ' + why if why else ''} "
                      f"(sqret supports {SUPPORTED})")


def index_factory(d: int, spec: str, metric: str = "l2") -> Index:
    """An untrained index of dimension d spelled as FAISS's ``index_factory(d, spec)``, e.g. ``"PQ16"``,
    ``"PQ64x4fs"``, ``"IVF4096,PQ32x4fs"``, ``"OPQ16_64,IVF1024,PQ16"``, ``"IVF1024,PQ64x4fs,RFlat"``,
    ``"IVF256,PQ16,Refine(SQ8)"``. A spec it does not support is a ValueError naming the unsupported part."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"index_factory: d must be an int >= 1, got {d!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"index_factory: spec must be a non-empty string, got {spec!r}")
    metric = check_metric(metric)
    parts = [p.strip() for p in spec.split(",")]
    first = parts[0]
    transform = None
    m = re.fullmatch(r"(OPQ|PCAR|PCA|RR)(\d+)(?:_(\d+))?", parts[0])
    if m:
        kind, a, b = m.group(1), int(m.group(2)), m.group(3)
        if kind == "OPQ":
            transform = ("opq", int(b) if b else d, a)
        elif b:
            raise _error(spec, parts[0], "only OPQ takes an _{D} suffix")
        else:
            transform = (_TRANSFORM[kind], a, None)
        parts = parts[1:]
    refine = None
    if parts and parts[-1] in _REFINE:
        refine = _REFINE[parts[-1]]
        parts = parts[:-1]
    elif parts and (parts[-1].startswith("R") and parts[-1] != "RR" or parts[-1].startswith("Refine")):
        raise _error(spec, parts[-1], "refinement is RFlat or Refine(Flat|SQfp16|SQ8)")
    d_base = transform[1] if transform else d
    if transform and not 1 <= d_base <= d:
        raise _error(spec, first, f"the output dimension must be in [1, d = {d}]")
    if transform and transform[0] == "opq" and (transform[2] < 1 or d_base % transform[2]):
        raise _error(spec, first, f"OPQ's M = {transform[2]} must divide its output dimension {d_base}")
    nlist = None
    if parts and re.fullmatch(r"IVF\d+", parts[0]):
        nlist = int(parts[0][3:])
        if nlist < 1:
            raise _error(spec, parts[0], "nlist must be >= 1")
        parts = parts[1:]
    if len(parts) != 1:
        raise _error(spec, ",".join(parts) or spec, "expected one PQ part" + (" after IVF" if nlist else ""))
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fsr|fs)?", parts[0])
    if not m:
        raise _error(spec, parts[0])
    M, nbits, fs = int(m.group(1)), int(m.group(2) or 8), m.group(3)
    if nbits not in (4, 8):
        raise _error(spec, parts[0], "nbits must be 4 or 8")
    if fs and nbits != 4:
        raise _error(spec, parts[0], "the fast scan (fs) needs 4-bit codes (x4)")
    if fs == "fsr" and nlist is None:
        raise _error(spec, parts[0], "fsr (by residual) needs an IVF")
    if M < 1 or d_base % M:
        raise _error(spec, parts[0], f"M = {M} must divide the dimension {d_base}")
    if nlist is None:
        base: Index = PQIndex(d_base, M, nbits, metric)
    else:
        base = IVFPQIndex(d_base, nlist, M, nbits, metric, fast_scan=bool(fs), by_residual=fs != "fs")
    index = base
    if transform:
        kind, _, tm = transform
        index = PreTransformIndex(d, kind, base, M=tm if kind == "opq" else M)
    if refine:
        index = RefineIndex(index, refine)
    index.factory_spec = ",".join(p.strip() for p in spec.split(","))
    return index
