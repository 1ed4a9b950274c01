"""Backbones: images [B, C, H, W] -> features [B, dim].

``SmallCNN`` for 8x8 / 28x28 / 32x32 images on a CPU budget, ``resnet18_cifar`` (3x3 stem, no max-pool, for
32x32 images), torchvision ``resnet50`` / ``vgg16`` for larger images with weights from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv blocks (a 2x2 pool after each block while the image is larger than 8x8) and a projection."""

    def __init__(self, in_channels: int = 1, dim: int = 64, width: int = 32, image_size: int = 8):
        super().__init__()
        layers, c, size = [], in_channels, image_size
        for out in (width, 2 * width, 4 * width if image_size > 8 else 2 * width)[: 3 if image_size > 8 else 2]:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if size > 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * c, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.dim = dim

    def forward(self, x):
        return self.head(self.features(x))


def _load_weights(model: nn.Module, weights: str | Path | None, skip: tuple[str, ...]) -> None:
    if weights is None:
        return
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith(skip)]
    if missing or unexpected:
        raise ValueError(f"{weights}: does not match the architecture (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]})")


def resnet18_cifar(dim: int, in_channels: int = 3, weights: str | Path | None = None) -> nn.Module:
    """ResNet-18 for 32x32 images as in the CIFAR literature: 3x3 stride-1 stem, no max-pool, fc -> dim."""
    from torchvision.models import resnet18

    m = resnet18(num_classes=dim)
    m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    _load_weights(m, weights, ("fc.",))
    m.dim = dim
    return m


def resnet50(dim: int, weights: str | Path | None = None) -> nn.Module:
    """torchvision ResNet-50 with its classifier replaced by a linear map to ``dim`` (ImageNet weights from
    a local ``weights`` file, e.g. ``resnet50-0676ba61.pth``; the classifier weights are ignored)."""
    from torchvision.models import resnet50 as tv

    m = tv()
    _load_weights(m, weights, ("fc.",))
    m.fc = nn.Linear(m.fc.in_features, dim)
    m.dim = dim
    return m


def vgg16(dim: int, weights: str | Path | None = None) -> nn.Module:
    """torchvision VGG-16 with its last classifier layer mapping to ``dim`` (weights from a local file)."""
    from torchvision.models import vgg16 as tv

    m = tv()
    _load_weights(m, weights, ("classifier.6.",))
    m.classifier[6] = nn.Linear(m.classifier[6].in_features, dim)
    m.dim = dim
    return m


BACKBONES = ("small", "resnet18", "resnet50", "vgg16")


def build_backbone(name: str, dim: int, in_channels: int = 3, image_size: int = 32, weights=None,
                   width: int = 32) -> nn.Module:
    """A backbone by name (see ``BACKBONES``) giving features [B, dim]."""
    if name == "small":
        if weights is not None:
            raise ValueError("the small CNN has no pretrained weights")
        return SmallCNN(in_channels, dim, width, image_size)
    if name == "resnet18":
        return resnet18_cifar(dim, in_channels, weights)
    if in_channels != 3:
        raise ValueError(f"{name} takes RGB images, got {in_channels} channels")
    if name == "resnet50":
        return resnet50(dim, weights)
    if name == "vgg16":
        return vgg16(dim, weights)
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


def stage_maps(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps [B, C_s, H_s, W_s] after each stage of a backbone, shallow to deep (PHPQ's pyramid):
    the conv blocks of the small CNN, layer1..layer4 of a ResNet, the outputs of VGG's pooling layers."""
    if isinstance(backbone, SmallCNN):
        maps, h = [], x
        for layer in backbone.features:
            if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.Flatten)):
                break
            h = layer(h)
            if isinstance(layer, (nn.ReLU, nn.MaxPool2d)):
                if maps and isinstance(layer, nn.MaxPool2d):
                    maps[-1] = h  # a block ends after its pool
                elif isinstance(layer, nn.ReLU):
                    maps.append(h)
        return maps
    if hasattr(backbone, "layer4"):  # torchvision ResNet
        h = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        maps = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(backbone, name)(h)
            maps.append(h)
        return maps
    if hasattr(backbone, "features") and hasattr(backbone, "classifier"):  # torchvision VGG
        maps, h = [], x
        for layer in backbone.features:
            h = layer(h)
            if isinstance(layer, nn.MaxPool2d):
                maps.append(h)
        return maps
    raise ValueError(f"no stages known for a {type(backbone).__name__} backbone")
