"""One trainer for the quantization methods: seeds, progress bar, JSON-lines log, optimizer and schedule
from the method's defaults, AMP on GPU, checkpoint + resume (bit-identical to uninterrupted training on the
CPU), validation mAP, data-parallel training under ``torchrun`` (gradients averaged over the ranks), and
retrieval mAP on the queries at the end."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .attack import pgd
from .augment import Augment, two_views
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, spec_differences
from .data.images import ImageSplit, to_float
from .eval import mean_average_precision


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # global: split over the ranks under torchrun
    lr: float | None = None  # None: the method's default
    weight_decay: float | None = None
    seed: int = 0
    augment: Augment | None = None  # None: Augment.small() up to 28x28 images, Augment() above
    device: str | None = None  # None: cuda when available
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    log: str | None = None  # JSON lines, one per epoch
    checkpoint: str | None = None
    every: int = 1  # checkpoint every N epochs
    resume: bool = False
    val_every: int = 0  # validation mAP every N epochs (0: never)
    map_at: int = 100
    train_size: int | None = None  # train on a random subset of N training images (a CPU budget)
    meta: dict | None = None  # saved in the checkpoint (e.g. how to reload the dataset for sqret eval)
    progress: bool | None = None
    adv_eps: float = 0.0  # adversarial training: view a replaced by its PGD attack (sqret.attack) within this budget
    adv_steps: int = 3

    def __post_init__(self) -> None:
        def whole(name: str, lo: int, none: bool = False) -> None:
            v = getattr(self, name)
            if none and v is None:
                return
            if type(v) is not int or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

        whole("epochs", 1)
        whole("batch_size", 1)
        whole("every", 1)
        whole("val_every", 0)
        whole("adv_steps", 1)
        if isinstance(self.adv_eps, bool) or not isinstance(self.adv_eps, (int, float)) or not 0 <= self.adv_eps <= 1:
            raise ValueError(f"adv_eps must be a number in [0, 1] (pixels in [0, 1]), got {self.adv_eps!r}")
        whole("map_at", 1)
        whole("train_size", 1, none=True)
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                                  or (name == "lr" and v == 0)):
                raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {v!r}")


def resumable(path: str | Path, spec: dict | None, epochs: int, map_location="cpu") -> dict:
    """The checkpoint at path, checked to continue a run of ``spec`` (the method, code length, backbone, ...)
    to ``epochs`` epochs; CheckpointError saying what differs, or that there is nothing left to train."""
    state = load_checkpoint(path, map_location=map_location)
    missing = [k for k in ("model", "optimizer", "epoch", "generator", "torch_rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of sqret train (no {', '.join(missing)})")
    diff = spec_differences(state.get("spec"), spec)
    if diff:
        raise CheckpointError(f"--resume: {path} is of another model: " + "; ".join(diff))
    done = state["epoch"]
    if type(done) is not int or done < 0:
        raise CheckpointError(f"{path}: bad epoch {done!r}")
    if done >= epochs:
        raise CheckpointError(f"--resume: {path} has already trained {done} epochs; ask for more than {done} epochs "
                              "to continue (sqret eval evaluates it as it is)")
    return state


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def embed(method, images: torch.Tensor, batch: int = 512, device=None) -> torch.Tensor:
    """Retrieval features of images [N, C, H, W] (uint8 or float), in batches, on the CPU [N, D] float32."""
    method.eval()
    device = device or next(method.parameters()).device
    out = [method.features(to_float(images[a : a + batch]).to(device)).float().cpu()
           for a in range(0, images.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def evaluate(method, data: ImageSplit, map_at: int = 100, queries: str = "queries", symmetric: bool = False,
             index_kwargs: dict | None = None) -> float:
    """mAP@map_at of ``data.<queries>`` (``"queries"`` or ``"val"``) against the encoded database."""
    q, ql = (data.queries, data.query_labels) if queries == "queries" else (data.val, data.val_labels)
    if len(q) == 0:
        raise ValueError(f"the {queries} split is empty")
    index = method.index(**(index_kwargs or {}))
    index.add_codes(method.encode(embed(method, data.database).to(next(method.parameters()).device)).cpu())
    _, ranked = index.search(embed(method, q), min(map_at, len(index)), symmetric=symmetric)
    return mean_average_precision(ql, data.database_labels, ranked)


def lr_factor(step: int, total: int, schedule: str | None, warmup: float) -> float:
    """Learning-rate multiplier at a step: linear warm-up over ``warmup`` of the steps, then constant
    (``schedule`` None) or cosine decay to 0 (``"cosine"``)."""
    w = int(warmup * total)
    if step < w:
        return (step + 1) / w
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))
    if schedule is None:
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}")


def _optimizer(method, cfg: TrainConfig):
    d = method.defaults
    lr = cfg.lr or d["lr"]
    wd = d.get("weight_decay", 0.0) if cfg.weight_decay is None else cfg.weight_decay
    name = d.get("optimizer", "adam")
    if name == "sgd":
        return torch.optim.SGD(method.parameters(), lr=lr, momentum=d.get("momentum", 0.9), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(method.parameters(), lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(method.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"{type(method).__name__}: unknown optimizer {name!r}; expected one of adam, adamw, sgd")


def _sync(method, what: str = "all") -> None:
    """Broadcast parameters and / or buffers from rank 0 (no-op without torch.distributed)."""
    if _world()[1] == 1:
        return
    tensors = list(method.buffers()) + (list(method.parameters()) if what == "all" else [])
    for t in tensors:
        dist.broadcast(t.data, 0)


def _average_gradients(method) -> None:
    world = _world()[1]
    if world == 1:
        return
    for p in method.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def train(method, data: ImageSplit, cfg: TrainConfig) -> dict:
    """Train ``method`` (a ``sqret.methods.Method``) on ``data.train``; returns the final metrics.

    Under ``torchrun`` (torch.distributed initialised) every rank takes its slice of each global batch,
    gradients are averaged, parameters start (and stay) identical on all ranks, and rank 0 writes the log
    and checkpoints."""
    rank, world = _world()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    method.to(device)
    opt = _optimizer(method, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    start = 0
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if cfg.resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        state = resumable(ckpt, getattr(method, "spec", None), cfg.epochs, map_location=device)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epoch"]
    _sync(method)
    x, y = data.train, data.train_labels
    if cfg.train_size is not None and cfg.train_size < len(x):  # a random subset (datasets are often class-sorted)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.train_size].sort().values
        x, y = x[keep], y[keep]
    n = x.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"batch_size = {cfg.batch_size} is larger than the {n} training images")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size = {cfg.batch_size} must be divisible by the {world} ranks")
    local = cfg.batch_size // world
    augment = cfg.augment or (Augment.small() if max(x.shape[-2:]) <= 28 else Augment())
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    amp = cfg.amp and device.type == "cuda"
    log = open(cfg.log, "a") if cfg.log and rank == 0 else None
    record: dict = {}
    for epoch in range(start, cfg.epochs):
        method.train()
        method.start_epoch(epoch)
        t0, total, steps = time.perf_counter(), 0.0, 0
        perm = torch.randperm(n, generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=(rank != 0) or (None if cfg.progress is None else not cfg.progress))
        for s in bar:
            idx = perm[s * cfg.batch_size + rank * local : s * cfg.batch_size + (rank + 1) * local]
            batch, labels = to_float(x[idx]).to(device), y[idx].to(device)
            if method.views == 2:
                xa, xb = two_views(batch, augment, gen)
            else:
                xa, xb = augment(batch, gen), None
            if cfg.adv_eps:  # the attack of the current model on view a (input gradients only)
                xa = pgd(method, xa, eps=cfg.adv_eps, steps=cfg.adv_steps, generator=gen)
            for g, lr in zip(opt.param_groups, base_lrs, strict=False):
                g["lr"] = lr * lr_factor(epoch * steps_per_epoch + s, total_steps, method.defaults.get("schedule"),
                                         method.defaults.get("warmup", 0.0))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = method.loss(xa, xb, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {s}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(method)
            opt.step()
            if epoch == 0 and s == 0:
                _sync(method)  # a k-means initialisation on the first batch differs per rank: take rank 0's
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        _sync(method, "buffers")  # batch-norm statistics (and memories) of rank 0 everywhere
        record = {"epoch": epoch + 1, "loss": total / max(steps, 1), "seconds": round(time.perf_counter() - t0, 3),
                  "lr": opt.param_groups[0]["lr"]}
        if cfg.val_every and (epoch + 1) % cfg.val_every == 0 and len(data.val):
            record[f"val_mAP@{cfg.map_at}"] = evaluate(method, data, cfg.map_at, "val")
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if rank == 0 and cfg.progress is not False:  # one line per epoch (the bar above does not stay)
            line = (f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                    f"{record['seconds']:.1f} s" + "".join(f"  {k} {v:.4f}" for k, v in record.items()
                                                           if k.startswith("val_")))
            tqdm.write(line) if sys.stdout.isatty() else print(line, flush=True)
        if ckpt and rank == 0 and ((epoch + 1) % cfg.every == 0 or epoch + 1 == cfg.epochs):
            save_checkpoint({"model": method.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                          "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                          "config": {k: v for k, v in asdict(cfg).items() if k != "augment"}, "meta": cfg.meta,
                          "spec": getattr(method, "spec", None), "dataset": data.name}, ckpt)
    result = {"epochs": cfg.epochs, "bits": method.code_bits, f"mAP@{cfg.map_at}": evaluate(method, data, cfg.map_at)}
    if log:
        log.write(json.dumps({"final": result}) + "\n")
        log.close()
    return result
