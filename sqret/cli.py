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


def _train(args: argparse.Namespace) -> int:
    import json

    from .methods import METHODS
    from .models import SmallCNN
    from .train import TrainConfig, digits_images, train

    if args.dataset != "digits":
        raise SystemExit(f"dataset {args.dataset!r} is not supported yet (digits only)")
    method = METHODS[args.method](SmallCNN(1, dim=args.bits // 4 * 16), bits=args.bits)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, log=args.log,
                      checkpoint=args.checkpoint, resume=args.resume)
    print(json.dumps(train(method, digits_images(args.seed), cfg)))
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

    tr = sub.add_parser("train", help="train a deep quantization method; prints its retrieval mAP")
    tr.add_argument("--method", default="spq", choices=("spq",))
    tr.add_argument("--dataset", default="digits", choices=("digits",))
    tr.add_argument("--bits", type=int, default=32)
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=None, help="default: the method's")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--log", help="JSON-lines log file")
    tr.add_argument("--checkpoint", help="checkpoint file (written every epoch, atomically)")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.set_defaults(func=_train)

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
