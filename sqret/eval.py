"""Retrieval evaluation: recall@k against ground-truth neighbours; mAP@k, precision@k and precision-recall
against labels (rankings [Q, R] of database ids, -1 for none)."""

from __future__ import annotations

import torch


def recall_at_k(found: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """k-recall@k: mean fraction of the true k nearest neighbours (truth [Q, >=k]) among found[:, :k]."""
    f, t = found[:, :k], truth[:, :k]
    if t.shape[1] < k:
        raise ValueError(f"ground truth has {t.shape[1]} neighbours per query, fewer than k = {k}")
    hits = (f.unsqueeze(2) == t.unsqueeze(1)).any(2) & (f >= 0)
    return hits.sum().item() / max(t.numel(), 1)


def nn_recall_at_k(found: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """1-recall@k (FAISS's R@k): fraction of queries whose true nearest neighbour is among found[:, :k]."""
    return (found[:, :k] == truth[:, :1]).any(1).float().mean().item()


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """rel [Q, R] bool: does ranked[q, r] (a database id, -1 for none) share a label with query q?

    Labels are class ids [n] or multi-hot [n, L] (relevant when they share any label).
    """
    valid = ranked >= 0
    got = db_labels[ranked.clamp_min(0)]
    if query_labels.dim() == 1:
        rel = got == query_labels.unsqueeze(1)
    else:
        rel = (got * query_labels.unsqueeze(1)).sum(-1) > 0
    return rel & valid


def mean_average_precision(query_labels, db_labels, ranked: torch.Tensor, k: int | None = None) -> float:
    """mAP@k as in the deep-hashing literature (SPQ, HQC): for each query, the mean of precision@i over
    the relevant positions i <= k of its ranking ranked [Q, R]; a query with none scores 0."""
    ranked = ranked[:, :k] if k else ranked
    rel = relevance(query_labels, db_labels, ranked).float()
    hits = rel.cumsum(1)
    prec = hits / torch.arange(1, rel.shape[1] + 1, device=rel.device)
    n_rel = rel.sum(1)
    ap = (prec * rel).sum(1) / n_rel.clamp_min(1)
    return ap.mean().item() if ap.numel() else 0.0


def precision_at_k(query_labels, db_labels, ranked: torch.Tensor, k: int) -> float:
    """Mean fraction of relevant items among the first k retrieved (missing results count as irrelevant)."""
    if ranked.shape[1] < k:
        raise ValueError(f"rankings hold {ranked.shape[1]} results per query, fewer than k = {k}")
    rel = relevance(query_labels, db_labels, ranked[:, :k]).float()
    return rel.sum(1).div(k).mean().item() if rel.numel() else 0.0


def precision_recall_curve(query_labels, db_labels, ranked: torch.Tensor,
                           points: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean precision and recall over the queries at ``points`` cut-offs evenly spaced up to the ranking's
    length: (cutoffs [P], precision [P], recall [P]). Recall is against every relevant database item, so
    pass a full ranking (k = database size) for a curve that reaches recall 1."""
    R = ranked.shape[1]
    rel = relevance(query_labels, db_labels, ranked).float()
    if query_labels.dim() == 1:
        total = (db_labels.unsqueeze(0) == query_labels.unsqueeze(1)).sum(1).float()
    else:
        total = ((query_labels.float() @ db_labels.float().T) > 0).sum(1).float()
    cut = torch.linspace(R / points, R, points).round().long().clamp(1, R).unique()
    hits = rel.cumsum(1)[:, cut - 1]
    return cut, (hits / cut).mean(0), (hits / total.clamp_min(1).unsqueeze(1)).mean(0)
