"""PHPQ (Xu et al., "Pyramid Hybrid Pooling Quantization for Efficient Fine-Grained Image Retrieval"),
supervised.

- **Pyramid hybrid pooling**: the feature maps of the last ``stages`` backbone stages (default 3, or all;
  :func:`sqret.models.stage_maps`), each pooled by average *and* max pooling (fine-grained detail survives
  the max, context the average), each projected to the feature width, summed and layer-normalized:
  features [B, M * dsub].
- **Learnable quantizer with partial attention**: per sub-space, the soft assignment attends only to the
  ``attention`` codewords nearest the sub-vector (softmax of -||x_m - c||^2 / tau over those), so only the most
  relevant codewords of each sub-space are updated by a sample (the others get exactly zero gradient).
- Loss: cross-entropy of a shared classifier on the features and on their quantization, plus the
  quantization error weighted by ``w_quant``. Adam, lr 1e-3, cosine decay (our choices where the paper's
  code is not public).

The index searches the continuous features of the queries against the hard codes (nearest codewords).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..models import stage_maps
from ..nn import ProductQuantizer
from .base import Method, pq_shape


class PyramidHybridPooling(nn.Module):
    """Feature maps of several stages -> [B, dim]: per stage avg + max pooling, a linear map, summed."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(2 * c, dim) for c in channels)
        self.norm = nn.LayerNorm(dim)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        out = 0
        for f, proj in zip(maps, self.proj, strict=True):
            pooled = torch.cat([F.adaptive_avg_pool2d(f, 1).flatten(1), F.adaptive_max_pool2d(f, 1).flatten(1)], 1)
            out = out + proj(pooled)
        return self.norm(out)


def partial_attention(x: torch.Tensor, codebooks: torch.Tensor, tau: float, attention: int) -> torch.Tensor:
    """z [B, d] of x [B, d] over codebooks [M, K, dsub]: per sub-space the softmax of -||x_m - c||^2 / tau over
    the ``attention`` nearest codewords only, times those codewords (gradients reach only them)."""
    M, K, dsub = codebooks.shape
    a = min(attention, K)
    with torch.no_grad():
        near = ops.build_lut(x.detach().float(), codebooks.detach().float()).topk(a, dim=2, largest=False).indices
    xs = x.reshape(x.shape[0], M, 1, dsub)
    B = x.shape[0]  # gather over a broadcast view: its backward is deterministic (advanced indexing's is not)
    chosen = codebooks.expand(B, M, K, dsub).gather(2, near[..., None].expand(B, M, a, dsub))  # [B, M, a, dsub]
    p = torch.softmax(-((xs - chosen) ** 2).sum(-1) / tau, dim=-1)  # [B, M, a]
    return (p.unsqueeze(-1) * chosen).sum(2).reshape(x.shape[0], M * dsub)


class PHPQ(Method):
    defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "schedule": "cosine", "warmup": 0.0}
    views = 1
    supervised = True

    def __init__(self, backbone: nn.Module, *, bits: int = 32, num_classes: int = 10, K: int = 256, dsub: int = 16,
                 tau: float = 0.5, attention: int = 8, stages: int | None = None, w_quant: float = 0.1,
                 in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if type(attention) is not int or attention < 1:
            raise ValueError(f"attention must be an int >= 1 (codewords attended per sub-space), got {attention!r}")
        self.M = pq_shape(bits, K)
        dim = self.M * dsub
        self.backbone = backbone
        with torch.no_grad():
            was = backbone.training
            maps = stage_maps(backbone.eval(), torch.zeros(2, in_channels, image_size, image_size))
            backbone.train(was)
        stages = min(3, len(maps)) if stages is None else stages
        if not 1 <= stages <= len(maps):
            raise ValueError(f"stages must be in [1, {len(maps)}] for this backbone, got {stages}")
        self.stages = stages
        self.pool = PyramidHybridPooling([m.shape[1] for m in maps[-stages:]], dim)
        self.pq = ProductQuantizer(dim, self.M, K, tau=tau, mode="soft", kmeans_init=True)  # see _init_codewords
        self.attention, self.w_quant = attention, w_quant
        self.classifier = nn.Linear(dim, num_classes)

    @classmethod
    def feature_dim(cls, *, bits: int, K: int = 256, dsub: int = 16, **_) -> int:
        return pq_shape(bits, K) * dsub

    @classmethod
    def build_args(cls, *, num_classes: int, in_channels: int, image_size: int) -> dict:
        return {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid hybrid pooled features [B, M * dsub]."""
        return self.pool(stage_maps(self.backbone, x)[-self.stages:])

    def quantize(self, f: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.pq.initialized):
            self._init_codewords(f.detach().float())
        return partial_attention(f.float(), self.pq.codebooks, self.pq.tau, self.attention)

    @torch.no_grad()
    def _init_codewords(self, f: torch.Tensor) -> None:
        """Codewords drawn from the first batch's sub-vectors (slightly jittered): with partial attention a
        codeword far from every feature would never be attended, hence never trained."""
        M, K, dsub = self.pq.codebooks.shape
        rows = torch.randint(0, f.shape[0], (M, K), device=f.device)
        picked = f.reshape(f.shape[0], M, dsub)[rows, torch.arange(M, device=f.device)[:, None]]  # [M, K, dsub]
        self.pq.codebooks.copy_(picked + 0.01 * f.std() * torch.randn_like(picked))
        self.pq.initialized.fill_(True)

    def loss(self, xa: torch.Tensor, xb, labels: torch.Tensor) -> torch.Tensor:
        f = self.features(xa).float()
        z = self.quantize(f)
        ce = F.cross_entropy(self.classifier(f), labels) + F.cross_entropy(self.classifier(z), labels)
        return ce + self.w_quant * ((f - z) ** 2).sum(-1).mean()
