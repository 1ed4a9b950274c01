"""The robustness table (PQ-AG): each recipe's mAP on digits clean and under attack, white box (PGD on the
target's own gradients) and transferred (crafted on a surrogate: the same recipe trained from another seed),
at eps = 2, 4 and 8 / 255, for the model trained plainly and with adversarial training (--adv-eps 8/255).

    python benchmarks/robustness.py [--methods spq sscq mecoq dpq mopq phpq] [--bits 32] [--epochs 30]

Writes benchmarks/results/robustness.{json,md} after every method (partial results survive an interruption).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sqret.attack import attack_retrieval
from sqret.data import load_digits_images
from sqret.demo import digits_lr
from sqret.methods import build_method
from sqret.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
EPS = (2, 4, 8)  # / 255


def _train(name: str, data, bits: int, epochs: int, seed: int, adv_eps: float = 0.0):
    torch.manual_seed(seed)
    c, h, _ = data.shape
    m = build_method(name, bits, "small", c, h, data.num_classes)
    train(m, data, TrainConfig(epochs=epochs, lr=digits_lr(name), seed=seed, map_at=100, progress=False,
                               adv_eps=adv_eps, adv_steps=3))
    return m


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", nargs="+", default=["spq", "sscq", "mecoq", "dpq", "mopq", "phpq"])
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the attacks")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    record = {"machine": f"{cpu}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "bits": args.bits, "epochs": args.epochs, "steps": args.steps, "rows": []}
    data = load_digits_images(val_per_class=0)
    for name in args.methods:
        t0 = time.perf_counter()
        surrogate = _train(name, data, args.bits, args.epochs, seed=1)
        for training, adv in (("plain", 0.0), ("adversarial (8/255)", 8 / 255)):
            target = _train(name, data, args.bits, args.epochs, seed=0, adv_eps=adv)
            row = {"method": name, "training": training}
            for e in EPS:
                white = attack_retrieval(target, data, eps=e / 255, steps=args.steps)
                black = attack_retrieval(target, data, eps=e / 255, steps=args.steps, surrogate=surrogate)
                row["clean"] = white["mAP@100 clean"]
                row[f"white {e}"] = white["mAP@100 attacked"]
                row[f"transfer {e}"] = black["mAP@100 attacked"]
                row[f"top-10 changed {e}"] = white["top-10 changed"]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
        (RESULTS / "robustness.json").write_text(json.dumps(record, indent=1))
        write_markdown(record)


def write_markdown(record: dict) -> None:
    head = " | ".join(f"white {e}/255 | transfer {e}/255" for e in EPS)
    lines = [f"Machine: {record['machine']}, torch {record['torch']}. Command: `python benchmarks/robustness.py`.",
             "", f"digits, {record['bits']} bits, {record['epochs']} epochs, mAP@100 of 200 queries; PGD "
             f"{record['steps']} steps on the soft codes; transfer: crafted on the same recipe from another seed.",
             "", f"| method | training | clean | {head} | top-10 changed (white 8/255) |",
             "|---" * (4 + 2 * len(EPS)) + "|"]
    for r in record["rows"]:
        cells = " | ".join(f"{r[f'white {e}']:.3f} | {r[f'transfer {e}']:.3f}" for e in EPS)
        lines.append(f"| {r['method']} | {r['training']} | {r['clean']:.3f} | {cells} | {r['top-10 changed 8']:.0%} |")
    (RESULTS / "robustness.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
