"""The embedded default dataset: scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RetrievalSplit:
    """Standard retrieval split: queries, a database (also the training set), and their labels."""

    queries: torch.Tensor  # [Q, D] float32
    query_labels: torch.Tensor  # [Q] int64
    database: torch.Tensor  # [N, D] float32
    database_labels: torch.Tensor  # [N] int64


def load_digits_split(queries_per_class: int = 20, seed: int = 0) -> RetrievalSplit:
    """Digits as 64-d float vectors: ``queries_per_class`` random queries per class, the rest the database."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    q = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:queries_per_class] for c in np.unique(y)])
    db = np.setdiff1d(np.arange(len(y)), q)
    t = torch.from_numpy
    return RetrievalSplit(t(x[q]), t(y[q]), t(x[db]), t(y[db]))
