"""MoPQ (Xiao et al., EMNLP 2021, "Matching-oriented Product Quantization for Ad-hoc Retrieval").

Training maximizes the probability that a query matches its key *after the key is quantized* (the
Multinoulli Contrastive Loss, :func:`sqret.losses.multinoulli_contrastive`), rather than minimizing the
reconstruction error: queries stay continuous (they are searched by ADC), keys are the soft and the
straight-through hard reconstructions of the product quantizer, and the loss is MCL(q, soft keys) + MCL(q,
hard keys), as in the paper's code (dot products, temperature 1). For images the pairs are two augmented
views of one image (``pairs="views"``, both directions) or two images of one label (``pairs="labels"``:
the key of a query is another image of its label in the batch, and the other keys of that label are not
negatives). Differentiable cross-device sampling (the paper's DCS) is ``cross_device_negatives=True``: under
``torchrun`` the keys of every rank are negatives for every query (:mod:`sqret.crossdevice`).

Codebooks of the paper: K = 256 per codebook (M = bits / 8). The paper fine-tunes BERT with Adam; the small
CNNs here take Adam lr 3e-4 (SPQ's) instead, our choice.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import multinoulli_contrastive
from ..nn import ProductQuantizer
from .base import Method, pq_shape

PAIRS = ("views", "labels")


class MoPQ(Method):
    defaults = {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5, "schedule": None, "warmup": 0.0}

    def __init__(self, backbone: nn.Module, *, bits: int = 32, K: int = 256, dsub: int = 16, tau_q: float = 0.2,
                 tau: float = 1.0, pairs: str = "views", cross_device_negatives: bool = False):
        super().__init__()
        if pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
        self.M = pq_shape(bits, K)
        self.backbone = backbone
        self.pq = ProductQuantizer(self.M * dsub, self.M, K, tau=tau_q, mode="soft", kmeans_init=False)
        self.tau, self.pairs, self.cross_device = tau, pairs, bool(cross_device_negatives)

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 256, dsub: int = 16, **_) -> int:
        return pq_shape(bits, K) * dsub

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        return self.pairs == "labels"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous features [B, M * dsub]: the queries (searched by ADC) and, quantized, the keys."""
        return self.backbone(x)

    def _keys(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = self.pq(f)
        hard = self.pq.decode(self.pq.encode(f))
        return soft, soft + (hard - soft).detach()  # the hard key: forward hard, backward soft

    def _mcl(self, q: torch.Tensor, f_keys: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        soft, hard = self._keys(f_keys)
        kw = {"labels": labels, "cross_device": self.cross_device}
        return multinoulli_contrastive(q, soft, self.tau, **kw) + multinoulli_contrastive(q, hard, self.tau, **kw)

    def loss(self, xa: torch.Tensor, xb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        fa, fb = self.features(xa), self.features(xb)
        if self.pairs == "views":
            return (self._mcl(fa, fb, None) + self._mcl(fb, fa, None)) / 2
        partner = same_label_partners(labels)
        return self._mcl(fa, fb[partner], labels)


def same_label_partners(labels: torch.Tensor) -> torch.Tensor:
    """For each row, another row of its label (the next one of that label in batch order, cyclically; itself
    when it is alone) -> int64 [B]."""
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    B = labels.shape[0]
    pos = torch.arange(B, device=labels.device)
    start = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    end = torch.searchsorted(sorted_labels, sorted_labels, right=True)
    nxt = torch.where(pos + 1 < end, pos + 1, start)  # the next of the same label, cyclically
    partner = torch.empty_like(order)
    partner[order] = order[nxt]
    return partner
