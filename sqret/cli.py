"""Command line: ``sqret <command>`` or ``python -m sqret <command>``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main(seed=args.seed)


def _backends(args: argparse.Namespace) -> int:
    from . import backends

    for b in backends():
        state = "available" if b.available else f"unavailable: {b.reason}"
        print(f"{b.name:12s} {state}")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    import time

    import torch

    from .data import read_vectors
    from .index import IVFPQIndex, PQIndex

    base = read_vectors(args.data, mmap=True)
    n, d = base.shape
    index = IVFPQIndex(d, args.ivf, args.m, args.nbits, args.metric) if args.ivf else PQIndex(d, args.m, args.nbits,
                                                                                              args.metric)
    rng = torch.Generator().manual_seed(args.seed)
    train_n = min(n, args.train_size)
    sample = torch.randperm(n, generator=rng)[:train_n].sort().values.numpy()
    t0 = time.perf_counter()
    index.train(torch.from_numpy(base[sample].astype("float32")), iters=args.iters, seed=args.seed)
    t1 = time.perf_counter()
    from tqdm.auto import tqdm

    for a in tqdm(range(0, n, args.chunk), desc="adding", unit="chunk"):
        index.add(torch.from_numpy(base[a : a + args.chunk].astype("float32")))
    t2 = time.perf_counter()
    index.save(args.index)
    print(f"built {type(index).__name__} over {n} x {d} vectors ({args.metric}, M={args.m}, nbits={args.nbits}"
          + (f", nlist={args.ivf}" if args.ivf else "") + f"): train {t1 - t0:.1f} s on {train_n}, add {t2 - t1:.1f} s;"
          f" wrote {args.index}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from .data import read_vectors
    from .eval import nn_recall_at_k, recall_at_k
    from .index import IVFPQIndex, load

    index = load(args.index, mmap=args.mmap, verify=not args.no_verify)
    queries = torch.from_numpy(np.asarray(read_vectors(args.queries), dtype=np.float32))
    kwargs = {"nprobe": args.nprobe} if isinstance(index, IVFPQIndex) else {}
    t0 = time.perf_counter()
    ids = torch.cat([index.search(queries[a : a + args.batch], args.k, **kwargs)[1]
                     for a in range(0, queries.shape[0], args.batch)])
    dt = time.perf_counter() - t0
    print(f"{queries.shape[0]} queries, k={args.k}" + (f", nprobe={args.nprobe}" if kwargs else "")
          + f": {dt:.3f} s, {queries.shape[0] / dt:,.0f} QPS")
    if args.groundtruth:
        gt = torch.from_numpy(np.asarray(read_vectors(args.groundtruth)).astype(np.int64))
        line = [f"1-recall@{r}: {nn_recall_at_k(ids, gt, r):.4f}" for r in (1, 10, 100) if r <= args.k]
        if gt.shape[1] >= args.k:
            line.append(f"{args.k}-recall@{args.k}: {recall_at_k(ids, gt, args.k):.4f}")
        print(", ".join(line))
    return 0


def _load_data(name: str, root: str | None, seed: int, image_size: int | None = None):
    from .data import load_dataset

    kwargs = {"size": (image_size, image_size)} if name == "folder" and image_size else {}
    return load_dataset(name, root, seed=seed, **kwargs)


def _init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _train(args: argparse.Namespace) -> int:
    import json

    from .methods import build_method
    from .train import TrainConfig, train

    joined = _init_distributed()
    data = _load_data(args.dataset, args.data, args.seed, args.image_size)
    c, h, _ = data.shape
    method = build_method(args.method, args.bits, args.backbone, c, h, data.num_classes, args.weights, args.width)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      amp=not args.no_amp, log=args.log, checkpoint=args.checkpoint, every=args.every,
                      resume=args.resume, val_every=args.val_every, map_at=args.map_at, train_size=args.train_size,
                      meta={"dataset": args.dataset, "data": args.data, "seed": args.seed,
                            "image_size": args.image_size})
    print(data.describe(), flush=True)
    result = train(method, data, cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(result))
    if joined:
        dist.destroy_process_group()
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from .eval import mean_average_precision, precision_at_k, precision_recall_curve
    from .methods import build_method
    from .train import embed

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    spec, meta = state.get("spec"), state.get("meta") or {}
    if not spec:
        raise SystemExit(f"{args.checkpoint}: no method spec in the checkpoint (was it written by sqret train?)")
    spec = dict(spec)
    method = build_method(spec.pop("name"), spec.pop("bits"), spec.pop("backbone"), spec.pop("in_channels"),
                          spec.pop("image_size"), spec.pop("num_classes"), None, spec.pop("width"), **spec)
    method.load_state_dict(state["model"])
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise SystemExit("the checkpoint does not name its dataset: pass --dataset")
    data = _load_data(name, args.data or meta.get("data"), meta.get("seed", 0), meta.get("image_size"))
    db, q = embed(method, data.database), embed(method, data.queries)
    k = min(args.map_at, len(data.database))
    result = {"checkpoint": args.checkpoint, "dataset": data.name, "queries": len(q), "database": len(db)}
    levels = range(1, method.levels + 1) if hasattr(method, "levels") and args.all_lengths else [None]
    codes = method.encode(db)  # full codes once: a shorter index keeps their prefix
    for lv in levels:
        index = method.index(lv) if lv else method.index()
        index.add_codes(codes)
        _, ranked = index.search(q, k, symmetric=args.symmetric)
        bits = method.code_bits if lv is None else lv * method.code_bits // method.levels
        row = {f"mAP@{k}": mean_average_precision(data.query_labels, data.database_labels, ranked)}
        row.update({f"P@{p}": precision_at_k(data.query_labels, data.database_labels, ranked, p)
                    for p in (10, 100, 1000) if p <= k})
        if args.pr:
            _, full = index.search(q, len(index), symmetric=args.symmetric)
            cut, prec, rec = precision_recall_curve(data.query_labels, data.database_labels, full, args.pr)
            row["pr_curve"] = {"cutoff": cut.tolist(), "precision": [round(v, 4) for v in prec.tolist()],
                               "recall": [round(v, 4) for v in rec.tolist()]}
        result[f"{bits} bits" + (" (symmetric)" if args.symmetric else "")] = row
    print(json.dumps(result, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqret", description="Deep product quantization and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PQ on the bundled digits, beside FAISS IndexPQ")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    sub.add_parser("backends", help="list the op backends and why any is unavailable").set_defaults(func=_backends)

    index = sub.add_parser("index", help="build indexes").add_subparsers(dest="index_command", required=True)
    build = index.add_parser("build", help="train and fill a PQ or IVF-PQ index from a vector file")
    build.add_argument("--data", required=True, help="database vectors (.fvecs, .bvecs, .npy)")
    build.add_argument("--index", required=True, help="output index file")
    build.add_argument("--m", type=int, required=True, help="sub-quantizers (code bytes at 8 bits)")
    build.add_argument("--nbits", type=int, default=8, choices=(4, 8))
    build.add_argument("--ivf", type=int, default=0, metavar="NLIST", help="inverted lists (0: flat PQ)")
    build.add_argument("--metric", default="l2", choices=("l2", "ip"))
    build.add_argument("--train-size", type=int, default=100_000, help="vectors sampled for training")
    build.add_argument("--iters", type=int, default=25, help="k-means iterations")
    build.add_argument("--chunk", type=int, default=100_000, help="vectors encoded per step")
    build.add_argument("--seed", type=int, default=0)
    build.set_defaults(func=_index_build)

    from .data.images import DATASETS
    from .methods import METHODS
    from .models import BACKBONES

    tr = sub.add_parser("train", help="train a deep quantization method; prints its retrieval mAP (torchrun: DDP)")
    tr.add_argument("--method", default="spq", choices=sorted(METHODS))
    tr.add_argument("--dataset", default="digits", choices=DATASETS)
    tr.add_argument("--data", help="dataset location (default: $SQRET_DATA or ../shared/data)")
    tr.add_argument("--image-size", type=int, help="resize folder images to this side")
    tr.add_argument("--bits", type=int, default=32, help="code length")
    tr.add_argument("--backbone", default="small", choices=BACKBONES)
    tr.add_argument("--weights", help="local pretrained backbone weights (resnet18/resnet50/vgg16)")
    tr.add_argument("--width", type=int, default=32, help="channels of the small CNN")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=128, help="global batch (split over torchrun ranks)")
    tr.add_argument("--lr", type=float, default=None, help="default: the method's")
    tr.add_argument("--train-size", type=int, help="train on a random subset of N training images")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    tr.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on the GPU")
    tr.add_argument("--val-every", type=int, default=0, help="validation mAP every N epochs (0: never)")
    tr.add_argument("--map-at", type=int, default=1000, help="mAP@k of the final evaluation")
    tr.add_argument("--log", help="JSON-lines log file")
    tr.add_argument("--checkpoint", help="checkpoint file (written atomically)")
    tr.add_argument("--every", type=int, default=1, help="checkpoint every N epochs")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint of sqret train: mAP@k, precision@k, PR curve")
    ev.add_argument("checkpoint")
    ev.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    ev.add_argument("--data", help="default: the checkpoint's")
    ev.add_argument("--map-at", type=int, default=1000)
    ev.add_argument("--symmetric", action="store_true", help="symmetric distance (queries encoded too)")
    ev.add_argument("--pr", type=int, default=0, metavar="POINTS", help="precision-recall curve at POINTS cut-offs")
    ev.add_argument("--all-lengths", action="store_true", help="progressive methods (dpq): every prefix length")
    ev.set_defaults(func=_eval)

    search = sub.add_parser("search", help="search an index; recall against ground truth, QPS")
    search.add_argument("--index", required=True)
    search.add_argument("--queries", required=True, help="query vectors (.fvecs, .bvecs, .npy)")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--nprobe", type=int, default=1, help="lists scanned per query (IVF)")
    search.add_argument("--groundtruth", help="true neighbour ids (.ivecs, .npy) for recall")
    search.add_argument("--batch", type=int, default=1000, help="queries per search call")
    search.add_argument("--mmap", action="store_true", help="memory-map the codes instead of reading them")
    search.add_argument("--no-verify", action="store_true", help="skip the checksums (instant open of huge files)")
    search.set_defaults(func=_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
