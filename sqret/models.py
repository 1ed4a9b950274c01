"""Backbones: a small CNN for 8x8 / 28x28 images (digits, MNIST)."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and a projection: images [B, C, H, W] -> features [B, dim]."""

    def __init__(self, in_channels: int = 1, dim: int = 64, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(8 * width, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        return self.head(self.features(x))
