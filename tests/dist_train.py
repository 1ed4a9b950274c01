"""Run under torchrun (gloo): train a recipe (default SSCQ) on digits data-parallel; save this rank's final state.

    dist_train.py OUT [METHOD [cross]]   (cross: with cross-device negatives)"""

import sys

import torch
import torch.distributed as dist

from sqret.crossdevice import leave
from sqret.data import load_digits_images
from sqret.methods import build_method
from sqret.train import TrainConfig, train


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: the trainer must take rank 0's
    name = sys.argv[2] if len(sys.argv) > 2 else "sscq"
    extra = {"cross_device_negatives": True} if sys.argv[3:] == ["cross"] else {}
    method = build_method(name, 16, "small", 1, 8, 10, width=8, **extra)
    if rank == 0:
        torch.save({k: v.clone() for k, v in method.state_dict().items()}, f"{out}/init.pt")
    result = train(method, load_digits_images(), TrainConfig(epochs=2, batch_size=128, lr=1e-3, progress=False))
    torch.save({"model": method.state_dict(), "result": result, "world": dist.get_world_size()}, f"{out}/rank{rank}.pt")
    leave()  # barrier, teardown, os._exit: see sqret.crossdevice.leave


if __name__ == "__main__":
    main(sys.argv[1])
