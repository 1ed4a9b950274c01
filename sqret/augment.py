"""Per-sample random augmentations applied to whole batches on the batch's device (no per-image Python).

Every function takes images [B, C, H, W] in [0, 1] and an optional CPU ``torch.Generator`` (random numbers
are drawn on the CPU, so results do not depend on the device) and returns the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _rand(n: int, *shape: int, generator=None, device=None) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator, device="cpu").to(device)


def random_resized_crop(x: torch.Tensor, scale=(0.6, 1.0), max_shift: float = 0.2, generator=None) -> torch.Tensor:
    """Each image zoomed in to a random area fraction in ``scale`` and shifted (affine grid sample)."""
    B = x.shape[0]
    u = _rand(B, 3, generator=generator, device=x.device)
    s = (scale[0] + (scale[1] - scale[0]) * u[:, 0]).sqrt()
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = (u[:, 1:] * 2 - 1) * max_shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, p: float = 0.5, generator=None) -> torch.Tensor:
    """Horizontal flip of a random subset of the batch."""
    flip = _rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True).expand_as(x)
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * w[None, :, None, None]).sum(1, keepdim=True).expand_as(x)


def color_jitter(x: torch.Tensor, strength: float = 0.4, saturation: float = 0.4, p: float = 1.0,
                 generator=None) -> torch.Tensor:
    """Per-sample brightness, contrast and (for RGB) saturation factors in [1 - s, 1 + s], applied to a
    random fraction ``p`` of the batch."""
    B = x.shape[0]
    u = _rand(B, 4, generator=generator, device=x.device).to(x.dtype)
    f = lambda col, s: (1 + s * (2 * u[:, col] - 1))[:, None, None, None]  # noqa: E731
    on = (u[:, 3] < p)[:, None, None, None]
    y = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * f(1, strength) + x.mean(dim=(1, 2, 3), keepdim=True)
    if x.shape[1] == 3:
        g = _gray(y)
        y = g + (y - g) * f(2, saturation)
    y = (y * f(0, strength)).clamp(0, 1)
    return torch.where(on, y, x)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator=None) -> torch.Tensor:
    """A random fraction ``p`` of the batch turned to luminance (kept with C channels)."""
    on = _rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(on[:, None, None, None], _gray(x), x)


def random_blur(x: torch.Tensor, p: float = 0.5, sigma=(0.1, 2.0), generator=None) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma (kernel about 10% of the image side, odd) on a fraction ``p``."""
    B, C, H, W = x.shape
    u = _rand(B, 2, generator=generator, device=x.device).to(x.dtype)
    s = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]
    r = max(1, int(0.05 * min(H, W)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # [B * C, 2r + 1]
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=B * C)
    return torch.where((u[:, 1] < p)[:, None, None, None], y.reshape(B, C, H, W), x)


@dataclass
class Augment:
    """A recipe of augmentations (SimCLR-style, as in SPQ / HQC / MeCoQ): crop-resize, flip, colour jitter,
    grayscale, blur. ``Augment.small()`` is gentler for 8x8 / 28x28 digits (no flip, no blur)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    max_shift: float = 0.25
    flip: float = 0.5
    jitter: float = 0.4
    saturation: float = 0.4
    jitter_p: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.5

    @classmethod
    def small(cls) -> Augment:
        return cls(crop_scale=(0.6, 1.0), max_shift=0.2, flip=0.0, jitter=0.4, saturation=0.0, jitter_p=1.0,
                   grayscale=0.0, blur=0.0)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        x = random_resized_crop(x, self.crop_scale, self.max_shift, generator)
        if self.flip:
            x = random_flip(x, self.flip, generator)
        if self.jitter_p:
            x = color_jitter(x, self.jitter, self.saturation, self.jitter_p, generator)
        if self.grayscale:
            x = random_grayscale(x, self.grayscale, generator)
        if self.blur:
            x = random_blur(x, self.blur, generator=generator)
        return x


def two_views(x: torch.Tensor, augment: Augment | None = None, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of a batch [B, C, H, W] (default recipe: ``Augment()``)."""
    augment = augment or Augment()
    return augment(x, generator), augment(x, generator)
