"""Flat 4-bit PQ on skewed tables: CIFAR-10 pixels PCA-128 (variance concentrated in the first sub-spaces),
``PQIndex(128, 64, 4)`` in its exact and approximate modes against FAISS ``PQ64x4fs``, and the same on
siftsmall (balanced tables), one thread, all queries in one call, best of 7.

    python benchmarks/skewed_tables.py     -> benchmarks/results/skewed_tables.{json,md}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import frontier_data  # noqa: E402
from frontier import machine, recall10, timed  # noqa: E402


def main() -> None:
    import faiss
    import torch

    from sqret.index import PQIndex

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    rows = []
    for name in ("cifar10pca", "siftsmall"):
        base, queries, gt = frontier_data.load(name)
        base, queries = np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries, np.float32)
        d = base.shape[1]
        index = PQIndex(d, 64, 4).train(torch.from_numpy(base), seed=0, progress=False)
        index.add(torch.from_numpy(base))
        xq = torch.from_numpy(queries)
        for exact in (True, False):
            t, (_, ids) = timed(lambda exact=exact, index=index, xq=xq: index.search(xq, 10, exact=exact), max_reps=7)
            rows.append({"set": name, "system": f"sqret PQ64x4 {'exact' if exact else 'approx'}",
                         "qps": len(xq) / t, "recall": recall10(ids.numpy(), gt)})
        f = faiss.index_factory(d, "PQ64x4fs")
        f.train(base)
        f.add(base)
        t, (_, ids) = timed(lambda f=f, queries=queries: f.search(queries, 10), max_reps=7)
        rows.append({"set": name, "system": "faiss PQ64x4fs", "qps": len(xq) / t, "recall": recall10(ids, gt)})
        print(json.dumps(rows[-3:]), flush=True)
    out = HERE / "results" / "skewed_tables.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    lines = ["# Flat 4-bit PQ on skewed and balanced tables (`python benchmarks/skewed_tables.py`)", "",
             f"Machine: {machine()['cpu']}, {machine()['cpus']} CPUs; one thread; 10-recall@10.", "",
             "| data | system | QPS | R10@10 | QPS vs FAISS |", "|---|---|---|---|---|"]
    for r in rows:
        ref = next(x["qps"] for x in rows if x["set"] == r["set"] and x["system"].startswith("faiss"))
        lines.append(f"| {r['set']} | {r['system']} | {r['qps']:,.0f} | {r['recall']:.3f} | {r['qps'] / ref:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
