"""One-query search latency of the indexes on siftsmall, one thread: what a change to the search path (the
thread-safe states of the reliability issue, the op layer) must not slow down.

    python benchmarks/search_latency.py [--out results/search_latency.json]       # this checkout
    python benchmarks/search_latency.py --compare OLD_CHECKOUT [--rounds 5]        # old vs this, alternating

With --compare, the script runs itself in child processes on each checkout in turn (alternating, several
rounds, because this VM's CPU speed changes by up to 1.6x for seconds at a time) and reports each side's
best median per case; OLD_CHECKOUT needs its native extension built (python setup.py build_ext --inplace).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SQRET_DATA", HERE.parents[1] / "shared" / "data"))


def measure(repeats: int = 3000) -> dict[str, float]:
    """Median microseconds per one-query search, per case."""
    import torch

    from sqret.data import read_fvecs
    from sqret.index import IVFPQIndex, PQIndex, index_factory

    torch.set_num_threads(1)
    base = torch.from_numpy(read_fvecs(DATA / "siftsmall" / "siftsmall_base.fvecs"))
    queries = torch.from_numpy(read_fvecs(DATA / "siftsmall" / "siftsmall_query.fvecs"))
    cases = {"PQ16x4 flat": (PQIndex(128, 16, 4), {}), "PQ16x8 flat": (PQIndex(128, 16, 8), {}),
             "IVF64,PQ16x8 nprobe 8": (IVFPQIndex(128, 64, 16, 8), {"nprobe": 8}),
             "IVF100,PQ32x4fs nprobe 2": (index_factory(128, "IVF100,PQ32x4fs"), {"nprobe": 2, "exact": False})}
    out = {}
    for name, (index, kw) in cases.items():
        index.train(base, iters=10, seed=0, progress=False)
        index.add(base)
        out[name] = _median_us(lambda q, index=index, kw=kw: index.search(q, 10, **kw), queries, repeats)
    try:  # the same configuration in FAISS, for scale (the same on both sides of --compare)
        import faiss
    except ImportError:
        return out
    faiss.omp_set_num_threads(1)
    fi = faiss.index_factory(128, "IVF100,PQ32x4fs")
    fi.train(base.numpy())
    fi.add(base.numpy())
    fi.nprobe = 2
    out["faiss IVF100,PQ32x4fs nprobe 2"] = _median_us(lambda q: fi.search(q.numpy(), 10), queries, repeats)
    return out


def _median_us(search, queries, repeats: int) -> float:
    """Median microseconds of search(one query [1, d]) over the queries in turn, after a warm-up."""
    import numpy as np

    for q in queries[:20]:
        search(q[None])
    times = []
    for j in range(repeats):
        q = queries[j % len(queries)][None]
        t0 = time.perf_counter_ns()
        search(q)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1000


def compare(old: Path, rounds: int) -> dict:
    best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    for _ in range(rounds):
        for side, root in (("old", old), ("new", HERE.parent)):
            env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, __file__, "--one"], env=env, capture_output=True, text=True,
                                 check=True, cwd="/")
            for name, us in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[side][name] = min(best[side].get(name, float("inf")), us)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, help="an older checkout to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "search_latency.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure()))
        return
    if args.compare is None:
        print(json.dumps(measure(), indent=1))
        return
    best = compare(args.compare, args.rounds)
    rev = subprocess.run(["git", "-C", str(args.compare), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    record = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": 1,
              "old_checkout": rev, "rounds": args.rounds, "median_us_best_of_rounds": best}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| case | old us | new us | new / old |", "|---|---|---|---|"]
    for name in best["new"]:
        o, n = best["old"].get(name, float("nan")), best["new"][name]  # a case the old checkout lacks: nan
        lines.append(f"| {name} | {o:.1f} | {n:.1f} | {n / o:.2f} |")
    md = args.out.with_suffix(".md")
    md.write_text(f"One-query search latency, siftsmall, 1 thread, best median of {args.rounds} alternating rounds; "
                  f"old = {rev}.\n\n" + "\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
