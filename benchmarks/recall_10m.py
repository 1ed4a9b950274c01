"""Recall of IVF-PQ at 10 million synthetic vectors, sqret beside FAISS, with 10,000 queries (the QPS
benchmark uses 100, where one query is 0.01 of recall). Same data, nlist, M, nbits and nprobe for both;
each library trains its own quantizers on the same 100,000 vectors, with several k-means seeds: the
recall of one training run moves by about 0.01 from seed to seed (in both libraries), as much as the
gap being measured, so the table gives the mean over seeds and the range.

python benchmarks/recall_10m.py [--n 10000000] [--queries 10000] [--seeds 3]
    -> benchmarks/results/recall_10M.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import torch

from sqret.eval import nn_recall_at_k
from sqret.index import IVFPQIndex

RESULTS = Path(__file__).parent / "results"
NPROBES = (1, 4, 16, 64)
RANKS = (1, 10, 100)


def data(n: int, nq: int, d: int = 64, seed: int = 0):
    """The QPS benchmark's generator (4,096 Gaussian clusters), with nq queries."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4096, d, generator=g) * 2
    base = torch.empty(n, d)
    for a in range(0, n, 1 << 20):
        b = min(n, a + (1 << 20))
        base[a:b] = centers[torch.randint(0, 4096, (b - a,), generator=g)] + torch.randn(b - a, d, generator=g)
    q = centers[torch.randint(0, 4096, (nq,), generator=g)] + torch.randn(nq, d, generator=g)
    best_d = torch.full((nq, 100), float("inf"))
    best_i = torch.zeros((nq, 100), dtype=torch.int64)
    qn = (q * q).sum(1, keepdim=True)
    step = max(1 << 12, (1 << 27) // nq)  # [nq, step] distances at a time (0.5 GB)
    for a in range(0, n, step):  # exact ground truth: the chunk's top 100, merged into the running top 100
        x = base[a : a + step]
        dist = qn - 2 * q @ x.T + (x * x).sum(1)
        cd, ci = dist.topk(min(100, x.shape[0]), dim=1, largest=False)
        dd, ii = torch.cat([best_d, cd], 1), torch.cat([best_i, ci + a], 1)
        best_d, pos = dd.topk(100, dim=1, largest=False)
        best_i = ii.gather(1, pos)
    return base, q, best_i


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    t0 = time.perf_counter()
    base, q, gt = data(args.n, args.queries)
    train = base[torch.randperm(args.n, generator=torch.Generator().manual_seed(1))[:100_000]]
    print(f"data and ground truth: {time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    for seed in range(args.seeds):
        ours = IVFPQIndex(64, 1024, 8, 8)
        ours.train(train, seed=seed, progress=False)
        theirs = faiss.IndexIVFPQ(faiss.IndexFlatL2(64), 64, 1024, 8, 8)
        theirs.cp.seed = theirs.pq.cp.seed = 1234 + seed  # FAISS's default seed is 1234
        theirs.train(train.numpy())
        for a in range(0, args.n, 1 << 20):
            ours.add(base[a : a + (1 << 20)])
            theirs.add(base[a : a + (1 << 20)].numpy())
        print(f"seed {seed} built: {time.perf_counter() - t0:.0f} s", flush=True)
        for nprobe in NPROBES:
            theirs.nprobe = nprobe
            found = {"sqret": ours.search(q, 100, nprobe=nprobe)[1],
                     "faiss": torch.from_numpy(theirs.search(q.numpy(), 100)[1])}
            for system, ids in found.items():
                runs.append({"seed": seed, "nprobe": nprobe, "system": system,
                             **{f"R@{r}": nn_recall_at_k(ids, gt, r) for r in RANKS}})
                print(json.dumps(runs[-1]), flush=True)
        del ours, theirs
    rows = [summary(runs, nprobe, system) for nprobe in NPROBES for system in ("sqret", "faiss")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recall_10M.json").write_text(json.dumps(
        {"n": args.n, "queries": args.queries, "seeds": args.seeds, "rows": rows, "runs": runs}, indent=1))
    lines = [f"IVF-PQ (nlist 1024, M = 8, 8 bits) over {args.n:,} synthetic vectors, {args.queries:,} queries, "
             f"{args.seeds} training seeds per library; R@r: fraction of queries whose true nearest neighbour "
             "is in the top r, mean over the seeds [min-max]. Command: `python benchmarks/recall_10m.py`.", "",
             "| nprobe | system | " + " | ".join(f"R@{r}" for r in RANKS) + " |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'R@{k}']:.3f} [{r[f'R@{k} min']:.3f}-{r[f'R@{k} max']:.3f}]" for k in RANKS]
        lines.append(f"| {r['nprobe']} | {r['system']} | " + " | ".join(cells) + " |")
    (RESULTS / "recall_10M.md").write_text("\n".join(lines) + "\n")


def summary(runs: list[dict], nprobe: int, system: str) -> dict:
    """Mean, min and max of each R@r over the seeds of one (nprobe, system)."""
    mine = [r for r in runs if r["nprobe"] == nprobe and r["system"] == system]
    out = {"nprobe": nprobe, "system": system}
    for k in RANKS:
        vals = [r[f"R@{k}"] for r in mine]
        out |= {f"R@{k}": sum(vals) / len(vals), f"R@{k} min": min(vals), f"R@{k} max": max(vals)}
    return out


if __name__ == "__main__":
    main()
