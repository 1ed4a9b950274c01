"""sqret's ops: the only layer that chooses a backend. Everything above calls these functions.

One module per op family, each with its public functions, its ``sqret::`` custom ops (fake kernels, autograd)
and its checks: ``soft`` (soft_quantize, assign_probs), ``codes`` (encode, decode, packed layouts), ``lut``
(build_lut), ``scan`` (adc_topk, pq_search), ``ivf`` (IVF-PQ search), ``refine`` (re-ranking). ``reference``
holds the plain-PyTorch implementation of every op (the ground truth and the fallback); ``registry`` chooses
the backend for each call (:func:`explain` says which and why); the backends register themselves below.

Shapes: ``x`` [B, d] with d = M * dsub, ``codebooks`` [M, K, dsub], ``codes`` [N, M] (uint8 for K <= 256, else
int16/int32; packed 4-bit [N, ceil(M/2)] uint8 when ``packed=True``), ``lut`` [Q, M, K].
Metrics: ``"l2"`` (squared Euclidean, smaller is closer), ``"ip"`` (inner product, larger is closer),
``"cos"`` (cosine of normalized sub-vectors and codewords, larger is closer); ``build_lut`` also takes
``"l2_sqrt"``: per sub-space Euclidean distance, whose sum is the SPQ/HQC ranking score.
"""

from __future__ import annotations

from . import checks, reference, registry
from .checks import LUT_METRICS, METRICS, code_dtype
from .codes import (
    FastScanCodes,
    decode,
    encode,
    fastscan_pack,
    fastscan_unpack,
    pack4,
    residual_decode,
    residual_encode,
    unpack4,
)
from .ivf import InvertedLists, IVFSearcher, coarse_probe, ivf_precomputed_table, ivf_search
from .lut import build_lut, codeword_tables, largest_for
from .refine import Refinement, refine_topk, sq8_decode, sq8_encode, sq8_train
from .registry import (
    BackendInfo,
    Choice,
    Impl,
    backends,
    explain,
    get_backend,
    register,
    select,
    set_backend,
    use_backend,
)
from .scan import adc_topk, pq_search
from .soft import assign_probs, soft_quantize

register(
    "reference",
    ("*",),
    {
        name: getattr(reference, name)
        for name in (
            "soft_quantize",
            "soft_quantize_backward",
            "assign_probs",
            "assign_probs_backward",
            "encode",
            "decode",
            "decode_backward",
            "build_lut",
            "adc_topk",
            "adc_topk_fastscan",
            "ivf_search",
            "ivf_probe_search",
            "ivf_refine_search",
            "ivf_searcher",
            "smallest_k_rows",
            "coarse_probe",
            "refine_topk",
            "pq_search",
        )
    },
    priority=0,
)
# the optional backends register themselves (cpu_native / cuda when built, triton when it can run)
from . import cpu_native, cuda_backend, triton_backend  # noqa: E402,F401

__all__ = [
    "BackendInfo",
    "Choice",
    "Impl",
    "FastScanCodes",
    "InvertedLists",
    "IVFSearcher",
    "fastscan_pack",
    "fastscan_unpack",
    "LUT_METRICS",
    "METRICS",
    "adc_topk",
    "checks",
    "reference",
    "registry",
    "assign_probs",
    "backends",
    "build_lut",
    "code_dtype",
    "coarse_probe",
    "codeword_tables",
    "decode",
    "encode",
    "explain",
    "get_backend",
    "ivf_precomputed_table",
    "ivf_search",
    "largest_for",
    "pack4",
    "pq_search",
    "Refinement",
    "refine_topk",
    "residual_decode",
    "residual_encode",
    "select",
    "set_backend",
    "soft_quantize",
    "sq8_decode",
    "sq8_encode",
    "sq8_train",
    "unpack4",
    "use_backend",
]
