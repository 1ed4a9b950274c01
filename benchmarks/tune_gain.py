"""What ``index.tune`` adds: recall@10 of real queries at the same code size, k-means codebooks against the same
codebooks fine-tuned through ``ops.soft_quantize`` (ranking distillation), on CPU.

    python benchmarks/tune_gain.py [--sets siftsmall,bigann10k,fmnistsmall,cifar10pca] [--steps 300]

Per data set and PQ shape (flat PQ, exact scoring): train k-means codebooks on the base vectors, copy the
index, tune the copy on the same base sample (its own held-out training queries decide whether the tuned
codebooks are kept), add the base to both, search the real queries, 10-recall@10 against the exact neighbours.
Results: benchmarks/results/tune_gain.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import frontier_data  # noqa: E402
from frontier import machine, recall10  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(frontier_data.SETS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tune_gain.json")
    args = ap.parse_args()
    from sqret.index import PQIndex, load

    torch.manual_seed(0)
    rows = []
    for name in args.sets.split(","):
        base, queries, gt = frontier_data.load(name)
        base = torch.from_numpy(np.ascontiguousarray(base, np.float32))
        queries = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        d = base.shape[1]
        for M, nbits in ((d // 8, 8), (d // 4, 4)):
            kmeans = PQIndex(d, M, nbits).train(base, progress=False)
            with tempfile.TemporaryDirectory() as tmp:  # an independent copy of the k-means index
                kmeans.save(Path(tmp) / "kmeans.sqret")
                tuned = load(Path(tmp) / "kmeans.sqret")
            t0 = time.time()
            report = tuned.tune(base, steps=args.steps, progress=False)
            spent = time.time() - t0
            recalls = {}
            for label, index in (("kmeans", kmeans), ("tuned", tuned)):
                index.add(base)
                recalls[label] = recall10(index.search(queries, 10)[1].numpy(), gt)
            rows.append({"set": name, "n": int(base.shape[0]), "d": d, "M": M, "nbits": nbits,
                         "bytes_per_vector": M * nbits / 8, "recall_kmeans": recalls["kmeans"],
                         "recall_tuned": recalls["tuned"], "gain": recalls["tuned"] - recalls["kmeans"],
                         "kept": report["kept"], "heldout_before": report["recall@10_before"],
                         "heldout_after": report["recall@10_after"], "tune_seconds": spent, "steps": args.steps})
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    lines = ["# Codebooks tuned through soft_quantize (`python benchmarks/tune_gain.py`)", "",
             f"Machine: {machine()['cpu']}, {machine()['cpus']} CPUs. Flat PQ, exact scoring, 10-recall@10 of the "
             f"real queries; tuning: {args.steps} steps of ranking distillation on the base vectors (kept only "
             "when its own held-out training queries gain).", "",
             "| data | PQ | bytes / vector | k-means R@10 | tuned R@10 | gain | kept | tune time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | PQ{r['M']}x{r['nbits']} | {r['bytes_per_vector']:g} | {r['recall_kmeans']:.3f} | "
                     f"{r['recall_tuned']:.3f} | {r['gain']:+.3f} | {'yes' if r['kept'] else 'no'} | "
                     f"{r['tune_seconds']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
