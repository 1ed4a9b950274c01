"""The losses that take cross-device negatives, on a fixed batch (shared by dist_negatives.py and its test)."""

import torch

from sqret import losses

B, D = 8, 6


def batch():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, D, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    return a, b, labels


def model():
    torch.manual_seed(1)
    return torch.nn.Linear(D, D).double()


CASES = {
    "nt_xent": lambda fa, fb, y, xd: losses.nt_xent(fa, fb, 0.5, cross_device=xd),
    "cross_quantized": lambda fa, fb, y, xd: losses.cross_quantized_contrastive(fa, fa * 0.9, fb, fb * 1.1, 0.5,
                                                                                cross_device=xd),
    "debiased": lambda fa, fb, y, xd: losses.debiased_contrastive(fa, fb, 0.4, 0.1, cross_device=xd),
    "debiased_memory": lambda fa, fb, y, xd: losses.debiased_contrastive(
        fa, fb, 0.4, 0.1, torch.ones(3, D, dtype=torch.float64), cross_device=xd),
    "multinoulli": lambda fa, fb, y, xd: losses.multinoulli_contrastive(fa, fb, 1.0, cross_device=xd),
    "multinoulli_labels": lambda fa, fb, y, xd: losses.multinoulli_contrastive(fa, fb, 1.0, labels=y,
                                                                               cross_device=xd),
}
