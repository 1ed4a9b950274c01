"""Distance tables: ``build_lut`` (lut [Q, M, K] for asymmetric distance computation) as a ``sqret::`` custom op,
``codeword_tables`` (symmetric distance tables [M, K, K]) and ``largest_for`` (the metric's order)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks, registry
from .checks import LUT_METRICS


def largest_for(metric: str) -> bool:
    """Whether larger scores are closer for ``metric`` (ip, cos) or smaller (l2, l2_sqrt)."""
    return checks.metric(metric, LUT_METRICS) in ("ip", "cos")


def check_lut(q, codebooks, metric) -> tuple[int, int, int]:
    """Queries [Q, d] against codebooks [M, K, dsub], a LUT metric; returns (M, K, dsub)."""
    if metric not in LUT_METRICS:
        checks.metric(metric, LUT_METRICS)
    return checks.features(q, codebooks, "queries")


def _build_lut_impl(q: Tensor, codebooks: Tensor, metric: str, dtype: torch.dtype | None = None) -> Tensor:
    check_lut(q, codebooks, metric)
    return registry.run("build_lut", registry.device_type(q), q, codebooks, metric, dtype)


_build_lut_op = torch.library.custom_op("sqret::build_lut", _build_lut_impl, mutates_args=())


@_build_lut_op.register_fake
def _(q, codebooks, metric, dtype=None):
    check_lut(q, codebooks, metric)
    M, K, _ = codebooks.shape
    cd = torch.float64 if torch.float64 in (q.dtype, codebooks.dtype) else torch.float32
    return q.new_empty((q.shape[0], M, K), dtype=dtype or cd)


def build_lut(
    queries: Tensor,
    codebooks: Tensor,
    metric: str = "l2",
    *,
    dtype: torch.dtype | None = None,
    check_finite: bool = False,
) -> Tensor:
    """Distance tables lut [Q, M, K] for asymmetric distance computation (float32 unless ``dtype``)."""
    if check_finite:  # the op checks the rest
        check_lut(queries, codebooks, metric)
        checks.finite(queries, "queries"), checks.finite(codebooks, "codebooks")
    return registry.direct("build_lut", _build_lut_impl)(queries, codebooks, metric, dtype)


def codeword_tables(codebooks: Tensor, metric: str = "l2") -> Tensor:
    """Codeword-to-codeword tables [M, K, K] (squared l2 or inner product per sub-space) for symmetric
    distance computation: row ``c`` of table ``m`` is the LUT of a query whose code in sub-space m is c."""
    M, K, _ = checks.codebooks(codebooks)
    metric = checks.metric(metric)
    C = codebooks.float()
    if metric == "cos":
        C = torch.nn.functional.normalize(C, dim=-1)
    ip = C @ C.transpose(1, 2)
    if metric != "l2":
        return ip
    n = (C * C).sum(-1)
    return (n[:, :, None] + n[:, None, :] - 2 * ip).clamp_min_(0)
