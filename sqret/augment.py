"""Per-sample random augmentations applied to whole batches on the batch's device (no per-image Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_resized_crop(x: torch.Tensor, scale=(0.6, 1.0), max_shift: float = 0.2, generator=None) -> torch.Tensor:
    """x [B, C, H, W] -> same shape: each image zoomed by its own factor and shifted (affine grid sample)."""
    B = x.shape[0]
    u = torch.rand(B, 3, generator=generator, device="cpu").to(x.device)
    s = (scale[0] + (scale[1] - scale[0]) * u[:, 0]).sqrt()
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = (u[:, 1:] * 2 - 1) * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, p: float = 0.5, generator=None) -> torch.Tensor:
    """Horizontal flip of a random subset of the batch."""
    flip = (torch.rand(x.shape[0], generator=generator, device="cpu") < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def color_jitter(x: torch.Tensor, strength: float = 0.4, generator=None) -> torch.Tensor:
    """Per-sample brightness and contrast changes."""
    B = x.shape[0]
    u = torch.rand(B, 2, generator=generator, device="cpu").to(x.device)
    bright = 1 + strength * (2 * u[:, 0] - 1)
    contrast = 1 + strength * (2 * u[:, 1] - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast[:, None, None, None] + mean) * bright[:, None, None, None]


def two_views(x: torch.Tensor, flip: bool = True, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of a batch [B, C, H, W]."""

    def view():
        v = color_jitter(random_resized_crop(x, generator=generator), generator=generator)
        return random_flip(v, generator=generator) if flip else v

    return view(), view()
