"""Command line: ``sqret <command>`` or ``python -m sqret <command>``.

Every user error (a missing or unreadable file, a wrong format, dimensions that do not match, a bad number)
ends with one line on stderr naming the argument and what is wrong, and a non-zero exit status (2 for bad
arguments, 1 for anything else); ``--debug`` or ``SQRET_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path


class UsageError(Exception):
    """A user error, reported as one line (exit status 2)."""


# ------------------------------------------------------------------------------------------ argument types


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an int >= {lo}, got {v}")
        return v

    parse.__name__ = f"int >= {lo}"
    return parse


positive_int, nonnegative_int = _int_at_least(1), _int_at_least(0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: ``sqret index build: error: argument --chunk: must be ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------------ input files


def _input_file(path: str, arg: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{arg} {path}: no such file")
    if p.is_dir():
        raise UsageError(f"{arg} {path}: is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{arg} {path}: not readable (permission denied)")
    return p


def _vectors(path: str, arg: str, mmap: bool = False):
    """[n, d] vectors from a .fvecs / .bvecs / .ivecs / .npy file named by argument ``arg``."""
    from .data import read_vectors

    p = _input_file(path, arg)
    try:
        a = read_vectors(p, mmap=mmap)
    except (ValueError, OSError) as err:
        raise UsageError(f"{arg} {path}: {_strip(str(err), p)}") from None
    if a.ndim != 2:
        raise UsageError(f"{arg} {path}: expected [n, d] vectors, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise UsageError(f"{arg} {path}: the file holds no vectors")
    return a


def _strip(message: str, path: Path) -> str:
    """An error message without a leading 'PATH: ' (the CLI names the argument and path itself)."""
    for prefix in (f"{path}: ", f"{path} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _output_file(path: str, arg: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{arg} {path}: is a directory")
    if not p.parent.is_dir():
        raise UsageError(f"{arg} {path}: folder {p.parent} does not exist")
    return p


def _warn(message: str) -> None:
    print(f"sqret: warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ commands


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
    from tqdm.auto import tqdm

    from .index import IVFPQIndex, PQIndex, index_factory

    base = _vectors(args.data, "--data", mmap=True)
    out = _output_file(args.index, "--index")
    n, d = base.shape
    train_n = min(n, args.train_size)
    if args.spec:
        if args.m is not None or args.nlist:
            raise UsageError("--spec describes the whole index: pass it without -M / --nlist")
        try:
            index = index_factory(d, args.spec, args.metric)
        except ValueError as err:
            raise UsageError(f"--spec {args.spec!r}: {err}") from None
        nlist = _nlist_of(index)
    else:
        if args.m is None:
            raise UsageError("pass -M / --m (with --nbits, --nlist), or --spec \"IVF1024,PQ32x4fs,RFlat\"")
        if d % args.m:
            raise UsageError(f"--m {args.m} does not divide the dimension d = {d} of --data")
        nlist = args.nlist
        index = IVFPQIndex(d, args.nlist, args.m, args.nbits, args.metric) if args.nlist else PQIndex(
            d, args.m, args.nbits, args.metric)
    if nlist and nlist > train_n:
        raise UsageError(f"nlist = {nlist} is more than the {train_n} training vectors (--train-size, --data)")
    rng = torch.Generator().manual_seed(args.seed)
    sample = torch.randperm(n, generator=rng)[:train_n].sort().values.numpy()
    t0 = time.perf_counter()
    index.train(torch.from_numpy(base[sample].astype("float32")), iters=args.iters, seed=args.seed)
    t1 = time.perf_counter()
    for a in tqdm(range(0, n, args.chunk), desc="adding", unit="chunk"):
        index.add(torch.from_numpy(base[a : a + args.chunk].astype("float32")))
    t2 = time.perf_counter()
    index.save(out)
    what = args.spec or (f"M={args.m}, nbits={args.nbits}" + (f", nlist={args.nlist}" if args.nlist else ""))
    print(f"built {type(index).__name__} over {n} x {d} vectors ({args.metric}, {what}): train {t1 - t0:.1f} s on "
          f"{train_n}, add {t2 - t1:.1f} s; wrote {out}")
    return 0


def _nlist_of(index) -> int:
    """The number of inverted lists of an index (through rotations and refinements), 0 for a flat one."""
    while hasattr(index, "base"):
        index = index.base
    return getattr(index, "nlist", 0)


def _load_index(path: str, mmap: bool, verify: bool):
    from .index import IndexFileError, load

    p = _input_file(path, "--index")
    try:
        return load(p, mmap=mmap, verify=verify)
    except IndexFileError as err:
        raise UsageError(f"--index {path}: {_strip(str(err), p)}") from None


def _groundtruth(path: str, queries: int):
    import numpy as np
    import torch

    gt = _vectors(path, "--groundtruth")
    if gt.dtype.kind not in "iu":
        raise UsageError(f"--groundtruth {path}: expected integer neighbour ids, got {gt.dtype}")
    if gt.shape[0] != queries:
        raise UsageError(f"--groundtruth {path} has {gt.shape[0]} rows, but there are {queries} queries")
    gt = torch.from_numpy(np.asarray(gt).astype(np.int64))
    if not bool((gt >= 0).any()):
        raise UsageError(f"--groundtruth {path}: holds no neighbour ids (every entry is negative)")
    return gt


def _search(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from .eval import nn_recall_at_k, recall_at_k

    index = _load_index(args.index, args.mmap, not args.no_verify)
    queries = torch.from_numpy(np.asarray(_vectors(args.queries, "--queries"), dtype=np.float32))
    if queries.shape[1] != index.d:
        raise UsageError(f"--queries {args.queries} has d = {queries.shape[1]}, the index has d = {index.d}")
    if not bool(torch.isfinite(queries).all()):
        raise UsageError(f"--queries {args.queries}: holds NaN or inf")
    gt = _groundtruth(args.groundtruth, queries.shape[0]) if args.groundtruth else None
    accepted = index.search_parameters()
    ivf, nlist = "nprobe" in accepted, _nlist_of(index)
    if args.nprobe is not None and not ivf:
        _warn(f"--nprobe is ignored: {args.index} is a flat {type(index).__name__}, it has no lists")
    kwargs = {"nprobe": args.nprobe or 1} if ivf else {}
    if ivf and kwargs["nprobe"] > nlist:
        _warn(f"--nprobe {kwargs['nprobe']} is more than nlist = {nlist}: every list is scanned")
        kwargs["nprobe"] = nlist
    for flag, name, value in (("--k-factor", "k_factor", args.k_factor),
                              ("--scoring", "exact", None if args.scoring is None else args.scoring == "exact")):
        if value is None:
            continue
        if name in accepted:
            kwargs[name] = value
        else:
            _warn(f"{flag} is ignored: {args.index} ({type(index).__name__}) takes no {name}")
    if len(index) == 0:
        _warn(f"{args.index} holds no vectors: every result is -1")
    batches = range(0, queries.shape[0], args.batch)

    def run() -> torch.Tensor:
        return torch.cat([index.search(queries[a : a + args.batch], args.k, **kwargs)[1] for a in batches])

    t0 = time.perf_counter()
    ids = run()  # cold: the first call also builds the tables and layouts it caches
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    run()
    warm = time.perf_counter() - t0
    Q = queries.shape[0]
    print(f"{Q} queries, k={args.k}" + "".join(f", {k}={v}" for k, v in kwargs.items())
          + f": {Q / warm:,.0f} QPS warm ({warm:.3f} s, second pass), {Q / cold:,.0f} QPS cold (first pass, "
          "tables built)")
    if gt is not None:
        line = [f"1-recall@{r}: {nn_recall_at_k(ids, gt, r):.4f}" for r in (1, 10, 100) if r <= args.k]
        if gt.shape[1] >= args.k:
            line.append(f"{args.k}-recall@{args.k}: {recall_at_k(ids, gt, args.k):.4f}")
        print(", ".join(line))
        if not bool(torch.isin(ids[ids >= 0], gt[gt >= 0]).any()):
            _warn("no result matches any --groundtruth id: are they ids of this index's vectors?")
    return 0


def _load_data(name: str, root: str | None, seed: int, image_size: int | None = None):
    from .data import load_dataset

    if root is not None and not Path(root).exists():
        raise UsageError(f"--data {root}: no such file or directory")
    kwargs = {"size": (image_size, image_size)} if name == "folder" and image_size else {}
    try:
        return load_dataset(name, root, seed=seed, **kwargs)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(f"--dataset {name}: {err}") from None


def _init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device}: not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available here")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: only cpu and cuda are supported")


CONTRASTIVE = ("spq", "sscq", "mecoq", "mopq")  # recipes with a contrastive loss: --cross-device-negatives


def _train(args: argparse.Namespace) -> int:
    import json

    from .checkpoint import CheckpointError, spec_differences
    from .methods import build_method
    from .train import TrainConfig, resumable, train

    _check_device(args.device)
    if args.dataset == "digits":  # the embedded default: the demo's split and budget unless asked otherwise
        from .demo import DIGITS_EPOCHS, MAP_AT, digits_lr

        args.epochs = DIGITS_EPOCHS if args.epochs is None else args.epochs
        args.map_at = MAP_AT if args.map_at is None else args.map_at
        args.lr = digits_lr(args.method) if args.lr is None else args.lr
    args.epochs = 10 if args.epochs is None else args.epochs
    args.map_at = 1000 if args.map_at is None else args.map_at
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint FILE (the checkpoint to continue from)")
    if args.weights:
        _input_file(args.weights, "--weights")
    if args.checkpoint:
        _output_file(args.checkpoint, "--checkpoint")
    if args.log:
        _output_file(args.log, "--log")
    asked = {"name": args.method, "bits": args.bits, "backbone": args.backbone, "width": args.width}
    if args.resume:  # before the data is loaded: say at once what does not match
        _input_file(args.checkpoint, "--checkpoint")
        try:
            state = resumable(args.checkpoint, None, args.epochs)
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        saved = {k: (state.get("spec") or {}).get(k) for k in asked}
        diff = spec_differences(saved, asked)
        if (state.get("meta") or {}).get("dataset") not in (None, args.dataset):
            diff.append(f"dataset: checkpoint {state['meta']['dataset']!r}, asked for {args.dataset!r}")
        if diff:
            raise UsageError(f"--resume: {args.checkpoint} is of another run: " + "; ".join(diff))
    joined = _init_distributed()
    if args.dataset == "digits" and not args.val_every:
        from .data import load_digits_images

        data = load_digits_images(val_per_class=0, seed=args.seed)  # the demo's query / database split
    else:
        data = _load_data(args.dataset, args.data, args.seed, args.image_size)
    c, h, _ = data.shape
    extra = {}
    if args.cross_device_negatives:
        if args.method not in CONTRASTIVE:
            raise UsageError(f"--cross-device-negatives: {args.method} has no contrastive loss "
                             f"(it is for {', '.join(CONTRASTIVE)})")
        extra["cross_device_negatives"] = True
    if args.pairs:
        if args.method != "mopq":
            raise UsageError("--pairs is an option of --method mopq")
        extra["pairs"] = args.pairs
    try:
        method = build_method(args.method, args.bits, args.backbone, c, h, data.num_classes, args.weights,
                              args.width, **extra)
    except ValueError as err:
        raise UsageError(f"--method {args.method} --bits {args.bits}: {err}") from None
    if args.batch_size > len(data.train):
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {len(data.train)} training images")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      amp=not args.no_amp, log=args.log, checkpoint=args.checkpoint, every=args.every,
                      resume=args.resume, val_every=args.val_every, map_at=args.map_at, train_size=args.train_size,
                      adv_eps=args.adv_eps, adv_steps=args.adv_steps,
                      meta={"dataset": args.dataset, "data": args.data, "seed": args.seed,
                            "image_size": args.image_size,
                            "val_per_class": 0 if args.dataset == "digits" and not args.val_every else None})
    print(data.describe(), flush=True)
    result = train(method, data, cfg)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(result))
    if joined:
        from .crossdevice import leave

        leave(0)  # barrier, teardown, os._exit (gloo's teardown can abort a finished rank at exit)
    return 0


def _load_trained(arg: str, what: str = "CHECKPOINT"):
    """(method, checkpoint state) of a checkpoint written by sqret train; a UsageError naming ``what``."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .methods import build_method

    p = _input_file(arg, what)
    try:
        state = load_checkpoint(p)
    except CheckpointError as err:
        raise UsageError(f"{what} {arg}: {_strip(str(err), p)}") from None
    spec = state.get("spec")
    if not isinstance(spec, dict) or "model" not in state:
        raise UsageError(f"{what} {arg}: no method spec in the checkpoint (was it written by sqret train?)")
    spec = dict(spec)
    try:
        method = build_method(spec.pop("name"), spec.pop("bits"), spec.pop("backbone"), spec.pop("in_channels"),
                              spec.pop("image_size"), spec.pop("num_classes"), None, spec.pop("width"), **spec)
        method.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UsageError(f"{what} {arg}: its model cannot be rebuilt ({str(err).splitlines()[0]})") from None
    return method, state


def _data_of(args: argparse.Namespace, state: dict):
    """The split a checkpoint was trained on (or ``--dataset`` / ``--data``), checked against its input size."""
    meta = state.get("meta") or {}
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise UsageError("the checkpoint does not name its dataset: pass --dataset")
    if name == "digits" and meta.get("val_per_class") == 0:  # trained on the demo's split
        from .data import load_digits_images

        data = load_digits_images(val_per_class=0, seed=meta.get("seed", 0))
    else:
        data = _load_data(name, args.data or meta.get("data"), meta.get("seed", 0), meta.get("image_size"))
    want = (state["spec"].get("in_channels"), state["spec"].get("image_size"))
    if tuple(data.shape[:2]) != want:
        raise UsageError(f"--dataset {name}: its images are {data.shape[0]} x {data.shape[1]} px (channels x side), "
                         f"the checkpoint's model takes {want[0]} x {want[1]}")
    return data


def _eval(args: argparse.Namespace) -> int:
    import json

    from .eval import mean_average_precision, precision_at_k, precision_recall_curve
    from .train import embed

    if args.gallery:
        _output_file(args.gallery, "--gallery")
    method, state = _load_trained(args.checkpoint)
    data = _data_of(args, state)
    db, q = embed(method, data.database), embed(method, data.queries)
    k = min(args.map_at, len(data.database))
    result = {"checkpoint": args.checkpoint, "dataset": data.name, "queries": len(q), "database": len(db)}
    progressive = method.progressive
    if args.all_lengths and not progressive:
        _warn(f"--all-lengths is ignored: {method.__class__.__name__} codes have one length (only dpq is progressive)")
    levels = range(1, method.levels + 1) if progressive and args.all_lengths else [None]
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
        if args.gallery and lv == levels[-1]:  # the full-length codes
            from .gallery import save_gallery

            result["gallery"] = str(save_gallery(args.gallery, data.queries, data.query_labels, data.database,
                                                 data.database_labels, ranked))
    print(json.dumps(result, indent=1))
    return 0


def _fraction(text: str) -> float:
    """A number or a fraction such as 8/255."""
    try:
        num, _, den = text.partition("/")
        v = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 8/255, got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (pixels in [0, 1]), got {text!r} = {v:g}")
    return v


def _attack(args: argparse.Namespace) -> int:
    import json

    from .attack import attack_retrieval, same_input

    target, state = _load_trained(args.checkpoint)
    surrogate = None
    if args.surrogate:
        surrogate, _ = _load_trained(args.surrogate, "--surrogate")
        try:
            same_input(target, surrogate)
        except ValueError as err:
            raise UsageError(f"--surrogate {args.surrogate}: {err}") from None
    data = _data_of(args, state)
    result = {"checkpoint": args.checkpoint, "surrogate": args.surrogate, "dataset": data.name,
              "queries": len(data.queries), "database": len(data.database)}
    result.update(attack_retrieval(target, data, eps=args.eps, steps=args.steps, surrogate=surrogate,
                                   map_at=args.map_at, seed=args.seed))
    print(json.dumps(result, indent=1))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from .gallery import save_curves

    _input_file(args.log, "LOG")
    _output_file(args.out, "--out")
    try:
        print(save_curves(args.log, args.out))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return 0


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or SQRET_DEBUG=1)")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(prog="sqret", description="Deep product quantization and retrieval.", formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"sqret {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="PQ on the bundled digits, beside FAISS IndexPQ", parents=[common],
                          formatter_class=fmt)
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_demo)
    sub.add_parser("backends", help="list the op backends and why any is unavailable", parents=[common]
                   ).set_defaults(func=_backends)

    index = sub.add_parser("index", help="build and search indexes").add_subparsers(dest="index_command",
                                                                                      required=True,
                                                                                      parser_class=_Parser)
    build = index.add_parser("build", help="train and fill a PQ or IVF-PQ index from a vector file",
                             parents=[common], formatter_class=fmt)
    build.add_argument("--data", required=True, help="database vectors (.fvecs, .bvecs, .npy)")
    build.add_argument("--index", required=True, help="output index file")
    build.add_argument("--spec", help="the index as FAISS's index_factory spells it, e.g. \"IVF1024,PQ32x4fs,RFlat\", "
                       "\"OPQ16_64,IVF256,PQ16\" (instead of -M / --nbits / --nlist)")
    build.add_argument("-M", "--m", dest="m", type=positive_int, help="sub-quantizers (code bytes at 8 bits); must "
                       "divide d")
    build.add_argument("--nbits", type=int, default=8, choices=(4, 8), help="bits per sub-quantizer code")
    build.add_argument("--nlist", "--ivf", dest="nlist", type=nonnegative_int, default=0, metavar="NLIST",
                       help="inverted lists (0: flat PQ)")
    build.add_argument("--metric", default="l2", choices=("l2", "ip"), help="distance")
    build.add_argument("--train-size", type=positive_int, default=100_000, help="vectors sampled for training")
    build.add_argument("--iters", type=positive_int, default=25, help="k-means iterations")
    build.add_argument("--chunk", type=positive_int, default=100_000, help="vectors encoded per step")
    build.add_argument("--seed", type=int, default=0, help="random seed of the training sample and k-means")
    build.set_defaults(func=_index_build)

    from .data.images import DATASETS
    from .methods import METHODS
    from .models import BACKBONES

    tr = sub.add_parser("train", help="train a deep quantization method; prints its retrieval mAP (torchrun: DDP)",
                        parents=[common], formatter_class=fmt)
    tr.add_argument("--method", default="spq", choices=sorted(METHODS), help="recipe")
    tr.add_argument("--dataset", default="digits", choices=DATASETS, help="data set")
    tr.add_argument("--data", help="dataset location (default: $SQRET_DATA or ../shared/data)")
    tr.add_argument("--image-size", type=positive_int, help="resize folder images to this side")
    tr.add_argument("--bits", type=positive_int, default=32, help="code length")
    tr.add_argument("--backbone", default="small", choices=BACKBONES, help="feature network")
    tr.add_argument("--weights", help="local pretrained backbone weights (resnet18/resnet50/vgg16)")
    tr.add_argument("--width", type=positive_int, default=32, help="channels of the small CNN")
    tr.add_argument("--epochs", type=positive_int, default=None,
                    help="epochs in all, also when resuming (default: 30 on digits, as the README's table; else 10)")
    tr.add_argument("--batch-size", type=positive_int, default=128, help="global batch (split over torchrun ranks)")
    tr.add_argument("--lr", type=positive_float, default=None,
                    help="learning rate (default: the method's; 1e-3 for spq / sscq / mopq on digits, as the README)")
    tr.add_argument("--train-size", type=positive_int, help="train on a random subset of N training images")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    tr.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on the GPU")
    tr.add_argument("--val-every", type=nonnegative_int, default=0, help="validation mAP every N epochs (0: never)")
    tr.add_argument("--map-at", type=positive_int, default=None,
                    help="mAP@k of the final evaluation (default: 100 on digits, as the README; else 1000)")
    tr.add_argument("--log", help="JSON-lines log file")
    tr.add_argument("--checkpoint", help="checkpoint file (written atomically)")
    tr.add_argument("--every", type=positive_int, default=1, help="checkpoint every N epochs")
    tr.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    tr.add_argument("--cross-device-negatives", action="store_true",
                    help="under torchrun, every rank's embeddings are negatives for every query, gradients flowing "
                         f"back to their owners ({', '.join(CONTRASTIVE)})")
    tr.add_argument("--adv-eps", type=_fraction, default=0.0,
                    help="adversarial training: PGD queries within this L-infinity budget (e.g. 8/255; 0: off)")
    tr.add_argument("--adv-steps", type=positive_int, default=3, help="PGD steps of --adv-eps")
    tr.add_argument("--pairs", choices=("views", "labels"),
                    help="mopq: a query's key is its other view (default) or another image of its label")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint of sqret train: mAP@k, precision@k, PR curve",
                        parents=[common], formatter_class=fmt)
    ev.add_argument("checkpoint", help="a checkpoint written by sqret train")
    ev.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    ev.add_argument("--data", help="dataset location (default: the checkpoint's)")
    ev.add_argument("--map-at", type=positive_int, default=1000, help="mAP@k")
    ev.add_argument("--symmetric", action="store_true", help="symmetric distance (queries encoded too)")
    ev.add_argument("--gallery", metavar="PNG", help="save queries and their top 10 retrieved images (correct "
                    "framed green, wrong red)")
    ev.add_argument("--pr", type=nonnegative_int, default=0, metavar="POINTS",
                    help="precision-recall curve at POINTS cut-offs")
    ev.add_argument("--all-lengths", action="store_true", help="progressive methods (dpq): every prefix length")
    ev.set_defaults(func=_eval)

    at = sub.add_parser("attack", help="PQ-AG: mAP of a checkpoint clean and under adversarial queries (PGD)",
                        parents=[common], formatter_class=fmt)
    at.add_argument("checkpoint", help="the target: a checkpoint written by sqret train")
    at.add_argument("--eps", type=_fraction, default=8 / 255, help="L-infinity budget, pixels in [0, 1] (e.g. 8/255)")
    at.add_argument("--steps", type=positive_int, default=10, help="PGD steps")
    at.add_argument("--surrogate", help="craft on this checkpoint and transfer (black box); default: the target's "
                                        "own gradients (white box)")
    at.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    at.add_argument("--data", help="dataset location (default: the checkpoint's)")
    at.add_argument("--map-at", type=positive_int, default=100, help="mAP@k")
    at.add_argument("--seed", type=int, default=0, help="seed of the attack's random start")
    at.set_defaults(func=_attack)

    cu = sub.add_parser("curves", help="training curves (loss, lr, validation mAP) of a sqret train --log file as PNG",
                        parents=[common], formatter_class=fmt)
    cu.add_argument("log", help="JSON-lines log written by sqret train --log")
    cu.add_argument("--out", default="curves.png", help="PNG to write")
    cu.set_defaults(func=_curves)

    for parent, name in ((sub, "search"), (index, "search")):
        search = parent.add_parser(name, help="search an index; recall against ground truth, QPS", parents=[common],
                                   formatter_class=fmt)
        search.add_argument("--index", required=True, help="index file written by sqret index build")
        search.add_argument("--queries", required=True, help="query vectors (.fvecs, .bvecs, .npy)")
        search.add_argument("-k", type=positive_int, default=10, help="results per query")
        search.add_argument("--nprobe", type=positive_int, default=None, help="lists scanned per query (IVF; 1)")
        search.add_argument("--k-factor", type=positive_float, help="refinement: re-rank k * k_factor candidates")
        search.add_argument("--scoring", choices=("exact", "approx"), help="4-bit fast scan: exact re-rank or the "
                            "quantized distances (default: the index's)")
        search.add_argument("--groundtruth", help="true neighbour ids (.ivecs, .npy) for recall")
        search.add_argument("--batch", type=positive_int, default=1000, help="queries per search call")
        search.add_argument("--mmap", action="store_true", help="memory-map the codes instead of reading them")
        search.add_argument("--no-verify", action="store_true", help="skip the checksums (instant open of huge files)")
        search.set_defaults(func=_search)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


_USER_ERRORS = (UsageError, FileNotFoundError, PermissionError, IsADirectoryError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SQRET_DEBUG", "") not in ("", "0")
    where = " ".join(filter(None, ["sqret", args.command, getattr(args, "index_command", None)]))
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore", UserWarning)
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for people; the traceback with --debug
        if debug:
            raise
        if isinstance(err, _USER_ERRORS):
            print(f"{where}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(f"{where}: error: {type(err).__name__}: {_one_line(err)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
