"""The methods x code lengths x datasets table: each recipe trained for a fixed CPU budget, its mAP beside
PQ on raw pixels (FAISS IndexPQ, 8 bits per sub-quantizer) at the same bits.

    python benchmarks/train_table.py [--datasets digits cifar10] [--bits 16 32 64] [--methods spq ... phpq]

digits: the bundled 8x8 digits, 20 queries per class, mAP@100, 30 epochs on all 1,597 database images.
cifar10: protocol I (10,000 test queries, 50,000 train images as database), mAP@1000, trained on a random
subset of ``--cifar-train`` training images for ``--cifar-epochs`` epochs (a CPU budget, far from the papers' 50-200
GPU epochs on a pretrained VGG-16 / ResNet: a budget comparison, not a reproduction). Small CNN backbone.
Writes benchmarks/results/train_table.{json,md} after every run (partial results survive an interruption).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sqret.data import load_dataset, to_float
from sqret.eval import mean_average_precision
from sqret.methods import build_method
from sqret.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
LR = {"spq": 1e-3, "sscq": 1e-3, "mecoq": None, "dpq": None, "mopq": 1e-3, "phpq": None}  # None: the recipe's


def pixels_pq(data, bits: int, k: int, seed: int = 0) -> tuple[float, float]:
    import faiss

    db = to_float(data.database).reshape(len(data.database), -1).numpy()
    q = to_float(data.queries).reshape(len(data.queries), -1).numpy()
    t0 = time.perf_counter()
    index = faiss.IndexPQ(db.shape[1], bits // 8, 8)
    index.pq.cp.seed = seed
    index.pq.cp.min_points_per_centroid = 1
    index.train(db)
    index.add(db)
    _, ranked = index.search(q, k)
    return mean_average_precision(data.query_labels, data.database_labels, torch.from_numpy(ranked)), \
        time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="+", default=["digits", "cifar10"])
    p.add_argument("--bits", nargs="+", type=int, default=[16, 32, 64])
    p.add_argument("--methods", nargs="+", default=["spq", "sscq", "mecoq", "dpq", "mopq", "phpq"])
    p.add_argument("--digits-epochs", type=int, default=30)
    p.add_argument("--cifar-epochs", type=int, default=3)
    p.add_argument("--cifar-train", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pixels", dest="pixels", action="store_false", help="keep the recorded PQ-on-pixels rows")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "train_table.json"
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    record = {"machine": f"{cpu}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "rows": []}
    redo = set(args.methods) | ({"pq-pixels (faiss)"} if args.pixels else set())
    if out.exists():  # keep the recorded rows of the (dataset, method) pairs not run now, in table order
        record["rows"] = [r for r in json.loads(out.read_text())["rows"]
                          if r["dataset"] not in args.datasets or r["method"] not in redo or r["bits"] not in args.bits]
    for name in args.datasets:
        data = load_dataset(name, seed=args.seed, **({"val_per_class": 0} if name == "digits" else {}))
        k = 100 if name == "digits" else 1000
        epochs = args.digits_epochs if name == "digits" else args.cifar_epochs
        size = None if name == "digits" else args.cifar_train
        c, h, _ = data.shape
        for bits in args.bits:
            if args.pixels:
                mAP, secs = pixels_pq(data, bits, k, args.seed)
                record["rows"].append({"dataset": name, "method": "pq-pixels (faiss)", "bits": bits,
                                       f"mAP@{k}": mAP, "seconds": round(secs, 1)})
            for method in args.methods:
                torch.manual_seed(args.seed)
                m = build_method(method, bits, "small", c, h, data.num_classes)
                t0 = time.perf_counter()
                r = train(m, data, TrainConfig(epochs=epochs, lr=LR[method], seed=args.seed, map_at=k,
                                               train_size=size, progress=False))
                record["rows"].append({"dataset": name, "method": method, "bits": bits, f"mAP@{k}": r[f"mAP@{k}"],
                                       "seconds": round(time.perf_counter() - t0, 1), "epochs": epochs,
                                       "train_images": size or len(data.train)})
                print(json.dumps(record["rows"][-1]), flush=True)
                out.write_text(json.dumps(record, indent=1))
                write_markdown(record)


ORDER = ["pq-pixels (faiss)", "spq", "sscq", "mecoq", "dpq", "mopq", "phpq"]


def _rank(method: str) -> int:
    return ORDER.index(method) if method in ORDER else len(ORDER)


def write_markdown(record: dict) -> None:
    lines = [f"Machine: {record['machine']}, torch {record['torch']}. Command: `python benchmarks/train_table.py`.", ""]
    for name in dict.fromkeys(r["dataset"] for r in record["rows"]):
        rows = [r for r in record["rows"] if r["dataset"] == name]
        key = next(k for k in rows[0] if k.startswith("mAP@"))
        bits = sorted({r["bits"] for r in rows})
        lines += [f"**{name}** ({key}; seconds of training + evaluation in brackets)", "",
                  "| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---" * (len(bits) + 1) + "|"]
        for method in sorted(dict.fromkeys(r["method"] for r in rows), key=_rank):
            cells = {r["bits"]: f"{r[key]:.3f} ({r['seconds']:.0f} s)" for r in rows if r["method"] == method}
            lines.append(f"| {method} | " + " | ".join(cells.get(b, "-") for b in bits) + " |")
        lines.append("")
    (RESULTS / "train_table.md").write_text("\n".join(lines))


if __name__ == "__main__":
    np.random.seed(0)
    main()
