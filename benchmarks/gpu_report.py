"""Markdown from the GPU benchmark JSON: medians, speed-ups over the reference, bandwidth fractions.

python benchmarks/gpu_report.py gpu.json > gpu.md
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> str:
    doc = json.load(open(path))
    groups = defaultdict(dict)
    for b in doc["benchmarks"]:
        groups[b["group"]][b["extra_info"].get("backend", "?")] = b
    v = doc.get("versions", {})
    lines = [f"GPU: {v.get('gpu', '?')}, driver {v.get('driver', '?')}; torch {v.get('torch', '?')}, "
             f"triton {v.get('triton', '?')}; run {doc.get('datetime', '')}", "",
             "| case | backend | median ms | peak extra MiB | note |", "|---|---|---|---|---|"]
    bw = None
    if "bandwidth" in groups:
        b = groups["bandwidth"]["torch copy"]
        bw = b["extra_info"]["bytes_moved"] / b["stats"]["median"]
        lines.append(f"| device copy of 1.6 GB | torch | {b['stats']['median'] * 1e3:.2f} | - | {bw / 1e12:.2f} TB/s |")
    for group, bs in groups.items():
        if group == "bandwidth":
            continue
        ref = bs.get("reference")
        for name, b in bs.items():
            med = b["stats"]["median"]
            note = f"{ref['stats']['median'] / med:.1f}x reference" if ref and name != "reference" else ""
            if "bytes_read" in b["extra_info"] and bw:
                floor = b["extra_info"]["bytes_read"] / bw
                note = f"{floor / med:.0%} of the bandwidth floor ({floor * 1e3:.2f} ms)"
                if b["extra_info"].get("traffic_overhead") is not None:
                    note += f"; model: {b['extra_info']['traffic_overhead']:.2%} bytes beyond the codes"
            if "query_codes" in b["extra_info"]:
                note += f"; {b['extra_info']['query_codes'] / med:.3g} query-codes/s"
            lines.append(f"| {group} | {name} | {med * 1e3:.2f} | {b['extra_info'].get('peak_extra_mib', 0):.0f} "
                         f"| {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1]))
