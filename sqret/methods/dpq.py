"""DPQ (Gao et al., IJCAI 2019, "Beyond product quantization: deep progressive quantization"), supervised.

Features x of the backbone are quantized by a residual quantizer of L levels (K = 256 codewords each, 8 bits
per level): level l quantizes what levels < l left, so the first l codes are a code of 8 l bits and one
model, trained once, serves every length (8 / 16 / 24 / 32 bits for L = 4). The loss, over every prefix l:

- classification: cross-entropy of a shared linear classifier on x and on the soft and hard prefix
  reconstructions;
- joint central loss: squared distance of x and of the soft and hard prefix reconstructions to a learned
  center of their class (weight 0.01);
- distortion: ||x - soft prefix||^2 + ||x - hard prefix||^2 (weight 0.1, per dimension).

Adam, lr 1e-3, cosine decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..index import ResidualIndex
from ..nn import ResidualQuantizer
from .base import Method, pq_shape


class DPQ(Method):
    defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "schedule": "cosine", "warmup": 0.0}
    views = 1
    supervised = True
    progressive = True

    def __init__(self, backbone: nn.Module, *, bits: int = 32, num_classes: int = 10, K: int = 256, dim: int = 64,
                 tau: float = 1.0, w_center: float = 0.01, w_distortion: float = 0.1):
        super().__init__()
        self.levels = pq_shape(bits, K)
        self.backbone = backbone
        self.rq = ResidualQuantizer(dim, self.levels, K, tau)
        self.classifier = nn.Linear(dim, num_classes)
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.1)
        self.w_center, self.w_distortion = w_center, w_distortion

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 256, dim: int = 64, **_) -> int:
        return dim

    @classmethod
    def build_args(cls, *, num_classes: int, **_) -> dict:
        return {"num_classes": num_classes}

    @property
    def code_bits(self) -> int:
        return self.levels * (self.rq.K.bit_length() - 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def loss(self, xa: torch.Tensor, xb, labels: torch.Tensor) -> torch.Tensor:
        x = self.features(xa).float()
        soft, hard = self.rq(x)  # [L, B, dim] each
        q = torch.cat([soft, hard])  # [2L, B, dim]
        L2, B, dim = q.shape
        ce = F.cross_entropy(self.classifier(x), labels) + F.cross_entropy(
            self.classifier(q.reshape(-1, dim)), labels.repeat(L2))
        center = losses.center_loss(torch.cat([x, q.reshape(-1, dim)]), labels.repeat(L2 + 1), self.centers)
        distortion = ((q - x) ** 2).sum(-1).mean() / dim
        return ce + self.w_center * center + self.w_distortion * distortion

    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        return self.rq.encode(feats)

    def code_probs(self, feats: torch.Tensor) -> torch.Tensor:
        return self.rq.probs(feats)

    def index(self, levels: int | None = None) -> ResidualIndex:
        """An empty index over the first ``levels`` levels (default all: the full code)."""
        return ResidualIndex.from_quantizer(self.rq, levels)
