"""PQ-AG: adversarial query generation against product-quantization retrieval.

``pgd`` perturbs query images within an L-infinity ball of radius ``eps`` (pixels in [0, 1]) by projected
gradient ascent on the cross-entropy between the query's clean soft code assignment and its perturbed one
(every sub-space, through the model and the differentiable soft assignment): the perturbed query moves away
from the codewords that represented it, so ADC ranks the database differently. White box: the gradients are
the target's. Black box (transfer): the perturbation is crafted on a surrogate model and only *evaluated*
on the target, whose gradients are never read (``attack_retrieval(..., surrogate=...)``).
"""

from __future__ import annotations

import torch

from .data.images import to_float

STEP_FACTOR = 2.5  # step size = 2.5 * eps / steps (Madry et al.): the ball is crossed within the steps


def code_probs(method, images: torch.Tensor) -> torch.Tensor:
    """Soft code assignments [B, M, K] of images (the method's quantizer on its features)."""
    return method.code_probs(method.features(images))


def check_budget(eps: float, steps: int) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be a number in [0, 1] (pixels in [0, 1]), got {eps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def pgd(method, images: torch.Tensor, *, eps: float, steps: int = 10, step_size: float | None = None,
        random_start: bool = True, generator: torch.Generator | None = None, batch: int = 256) -> torch.Tensor:
    """Adversarial images [B, C, H, W] (float in [0, 1], |adv - images| <= eps everywhere, on the method's
    device) that push the soft codes of ``method`` away from those of ``images`` (uint8 or float in [0, 1]).
    Only input gradients are computed (the parameters' ``.grad`` stay as they were); the method's train /
    eval mode is restored."""
    check_budget(eps, steps)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
    x0 = to_float(images)
    if eps == 0 or x0.shape[0] == 0:
        return x0.clone()
    alpha = STEP_FACTOR * eps / steps if step_size is None else float(step_size)
    was_training = method.training
    method.eval()  # batch statistics of the attacked batch must not leak into the model
    try:
        return torch.cat([_pgd_batch(method, x0[a:a + batch], eps, steps, alpha, random_start, generator)
                          for a in range(0, x0.shape[0], batch)])
    finally:
        method.train(was_training)


def _pgd_batch(method, x0, eps, steps, alpha, random_start, generator):
    device = next(method.parameters()).device
    x0 = x0.to(device)
    with torch.no_grad():
        p0 = code_probs(method, x0)
    x = x0
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(device)
        x = (x0 + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        p = code_probs(method, x)
        loss = -(p0 * torch.log(p.float().clamp_min(1e-12))).sum(-1).mean()  # cross-entropy to the clean codes
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach() + alpha * grad.sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
    return x.detach()


def same_input(target, surrogate) -> None:
    """A surrogate must take the target's images (channels, side)."""
    want = (target.spec.get("in_channels"), target.spec.get("image_size"))
    got = (surrogate.spec.get("in_channels"), surrogate.spec.get("image_size"))
    if want != got:
        raise ValueError(f"the surrogate takes {got[0]} x {got[1]} px images (channels x side), the target "
                         f"{want[0]} x {want[1]}")


@torch.no_grad()
def _ranked(method, index, queries: torch.Tensor, k: int) -> torch.Tensor:
    from .train import embed

    return index.search(embed(method, queries), k)[1]


def attack_retrieval(target, data, *, eps: float, steps: int = 10, surrogate=None, map_at: int = 100,
                     top: int = 10, seed: int = 0) -> dict:
    """mAP@map_at of ``data.queries`` against ``data.database`` on ``target``, clean and under attack (crafted
    on ``target``, white box, or on ``surrogate``, black box), and the fraction of queries whose top-``top``
    results changed."""
    from .eval import mean_average_precision
    from .train import embed

    check_budget(eps, steps)
    crafter = target if surrogate is None else surrogate
    if surrogate is not None:
        same_input(target, surrogate)
    with torch.no_grad():
        db = embed(target, data.database)
        index = target.index()
        index.add_codes(target.encode(db))
    k = min(map_at, len(data.database))
    gen = torch.Generator().manual_seed(seed)
    adv = pgd(crafter, data.queries, eps=eps, steps=steps, generator=gen)
    clean_ids, adv_ids = _ranked(target, index, data.queries, k), _ranked(target, index, adv, k)
    t = min(top, k)
    changed = [set(a.tolist()) != set(b.tolist()) for a, b in zip(clean_ids[:, :t], adv_ids[:, :t], strict=True)]
    return {
        f"mAP@{k} clean": mean_average_precision(data.query_labels, data.database_labels, clean_ids),
        f"mAP@{k} attacked": mean_average_precision(data.query_labels, data.database_labels, adv_ids),
        f"top-{t} changed": sum(changed) / max(len(changed), 1),
        "eps": eps, "steps": steps, "attack": "white box" if surrogate is None else "transfer (black box)",
        "max |delta|": float((adv.cpu() - to_float(data.queries)).abs().max()) if len(adv) else 0.0,
    }
