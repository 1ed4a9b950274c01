"""Write sqret/ops/soft_policy.json from the GPU benchmark JSON: for each measured shape (B, M, K, d), the
faster soft_quantize forward + backward of the cuda and triton kernels (the cuda backend then serves every
shape with the winner of the nearest measured one).

python benchmarks/soft_policy.py gpu_bench.json [out.json]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

DEFAULT_OUT = Path(__file__).parents[1] / "sqret" / "ops" / "soft_policy.json"


def policy(doc: dict) -> dict:
    times: dict[tuple, dict] = defaultdict(dict)
    for b in doc["benchmarks"]:
        shape = b["extra_info"].get("policy_shape")
        if shape:
            times[tuple(shape)][b["extra_info"]["backend"]] = b["stats"]["median"]
    shapes = []
    for (B, M, K, d), t in sorted(times.items()):
        if {"cuda", "triton"} <= t.keys():
            shapes.append({"B": B, "M": M, "K": K, "d": d, "winner": min(t, key=t.get),
                           "cuda_ms": round(t["cuda"] * 1e3, 4), "triton_ms": round(t["triton"] * 1e3, 4)})
    return {"gpu": doc.get("machine_info", {}).get("node", "?"), "datetime": doc.get("datetime"), "shapes": shapes}


if __name__ == "__main__":
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    result = policy(json.load(open(sys.argv[1])))
    out.write_text(json.dumps(result, indent=1))
    for r in result["shapes"]:
        print(f"B={r['B']} M={r['M']} K={r['K']} d={r['d']}: cuda {r['cuda_ms']} ms, triton {r['triton_ms']} ms"
              f" -> {r['winner']}")
