"""One trainer for the quantization methods: seeds, progress bar, JSON-lines log, checkpoint + resume
(bit-identical to uninterrupted training on the CPU), retrieval mAP at the end."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .augment import two_views
from .eval import mean_average_precision
from .index import PQIndex


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # None: the method's default
    weight_decay: float | None = None
    seed: int = 0
    flip: bool = False  # horizontal flips (off for digits)
    log: str | None = None  # JSON lines, one per epoch
    checkpoint: str | None = None
    every: int = 1  # checkpoint every N epochs
    resume: bool = False
    map_at: int = 100
    progress: bool | None = None


@dataclass
class Images:
    """A retrieval split of images: train / database [N, C, H, W] with labels, queries [Q, C, H, W]."""

    database: torch.Tensor
    database_labels: torch.Tensor
    queries: torch.Tensor
    query_labels: torch.Tensor


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(method, data: Images, map_at: int = 100, batch: int = 1024) -> float:
    """mAP@map_at of the queries against the PQ-encoded database (asymmetric distance)."""
    method.eval()
    feats = lambda x: torch.cat([method.features(x[a : a + batch]) for a in range(0, x.shape[0], batch)])  # noqa: E731
    index = PQIndex.from_quantizer(method.pq)
    index.add_codes(method.pq.encode(feats(data.database)))
    _, ranked = index.search(feats(data.queries), min(map_at, len(index)))
    return mean_average_precision(data.query_labels, data.database_labels, ranked)


def train(method, data: Images, cfg: TrainConfig) -> dict:
    """Train ``method`` (with ``.loss(view_a, view_b)``) on the database images; returns the final metrics."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    wd = method.defaults["weight_decay"] if cfg.weight_decay is None else cfg.weight_decay
    opt = torch.optim.Adam(method.parameters(), lr=cfg.lr or method.defaults["lr"], weight_decay=wd)
    start = 0
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if cfg.resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, weights_only=False)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epoch"]
    x = data.database
    n = x.shape[0]
    log = open(cfg.log, "a") if cfg.log else None
    loss = torch.tensor(float("nan"))
    for epoch in range(start, cfg.epochs):
        method.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        perm = torch.randperm(n, generator=gen)
        bar = tqdm(range(0, n - cfg.batch_size + 1, cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if cfg.progress is None else not cfg.progress, leave=False)
        for a in bar:
            xa, xb = two_views(x[perm[a : a + cfg.batch_size]], flip=cfg.flip, generator=gen)
            loss = method.loss(xa, xb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        record = {"epoch": epoch + 1, "loss": total / max(steps, 1), "seconds": time.perf_counter() - t0}
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if ckpt and ((epoch + 1) % cfg.every == 0 or epoch + 1 == cfg.epochs):
            _save_atomic({"model": method.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                          "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                          "config": asdict(cfg)}, ckpt)
    result = {"epochs": cfg.epochs, f"mAP@{cfg.map_at}": evaluate(method, data, cfg.map_at)}
    if log:
        log.write(json.dumps({"final": result}) + "\n")
        log.close()
    return result


def digits_images(seed: int = 0) -> Images:
    """The bundled digits as 1 x 8 x 8 images in [0, 1] (20 queries per class, the rest the database)."""
    from .data import load_digits_split

    s = load_digits_split(seed=seed)
    img = lambda t: (t / 16.0).reshape(-1, 1, 8, 8)  # noqa: E731
    return Images(img(s.database), s.database_labels, img(s.queries), s.query_labels)
