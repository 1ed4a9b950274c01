"""What every training recipe has: a backbone, a quantizer, the paper's optimisation defaults, a loss of
two augmented views (and labels, for supervised methods) and the index its codes are searched with."""

from __future__ import annotations

import torch
from torch import nn

from ..index import PQIndex


def pq_shape(bits: int, K: int) -> int:
    """Codebooks M for a code of ``bits`` bits with K codewords each (K a power of two dividing the bits)."""
    nbits = K.bit_length() - 1
    if K < 2 or K != 1 << nbits or bits % nbits or bits <= 0:
        raise ValueError(f"bits = {bits} must be a positive multiple of log2(K) = {nbits} (K a power of two)")
    return bits // nbits


class Method(nn.Module):
    """Base of the recipes. Subclasses set ``defaults`` (optimizer, lr, weight_decay, schedule, warmup) and
    implement ``features`` (the continuous retrieval features) and ``loss``."""

    defaults: dict = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": None, "warmup": 0.0}
    views = 2  # augmented views per image the loss takes
    supervised = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, xa: torch.Tensor, xb: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based)."""

    @property
    def code_bits(self) -> int:
        return self.pq.M * (self.pq.K.bit_length() - 1)

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        return self.pq.encode(feats)

    def index(self):
        """An empty index over the learned codewords (``add_codes`` then ``search``)."""
        return PQIndex.from_quantizer(self.pq)
