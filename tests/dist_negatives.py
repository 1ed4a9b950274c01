"""Run under torchrun (gloo): each rank computes the contrastive losses with cross-device negatives on its half
of a fixed global batch; rank 0 saves the rank-averaged losses and gradients (what the trainer applies)."""

import sys

import torch
import torch.distributed as dist
from negatives_cases import CASES, batch, model

from sqret.crossdevice import leave


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    a, b, labels = batch()
    n = a.shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    results = {}
    for name, loss_fn in CASES.items():
        lin = model()
        loss = loss_fn(lin(a[rows]), lin(b[rows]), labels[rows], True)
        loss.backward()
        grads = [p.grad.clone() for p in lin.parameters()]
        for g in grads:
            dist.all_reduce(g)
            g.div_(world)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        results[name] = {"loss": mean / world, "grads": grads}
    if rank == 0:
        torch.save(results, f"{out}/negatives.pt")
    leave()  # barrier, teardown, os._exit: see sqret.crossdevice.leave


if __name__ == "__main__":
    main(sys.argv[1])
