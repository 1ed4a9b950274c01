"""Turn a pytest-benchmark JSON into a markdown table of median times, QPS and speed-up against FAISS.
A case measured in several windows (test_cpu_scan's short cases) counts each system's best median.

python benchmarks/report.py RESULTS.json > RESULTS.md
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict


def machine(info: dict) -> str:
    cpu = info.get("cpu", {})
    return (
        f"{cpu.get('brand_raw', platform.processor())}, {cpu.get('count', '?')} logical CPUs, "
        f"{info.get('system', '')} {info.get('release', '')}, Python {info.get('python_version', '')}"
    )


def main(path: str) -> str:
    doc = json.load(open(path))
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in doc["benchmarks"]:  # repeated windows of a case: each system's best median
        have = groups[b["group"]].get(b["extra_info"].get("system", b["name"]))
        if have is None or b["stats"]["median"] < have["stats"]["median"]:
            groups[b["group"]][b["extra_info"].get("system", b["name"])] = b
    lines = [
        f"Machine: {machine(doc['machine_info'])}; threads: "
        + str(next(iter(doc["benchmarks"]))["extra_info"].get("threads", "?")),
        f"Run: {doc.get('datetime', '')}; versions: {json.dumps(doc.get('versions', {}))}",
        "",
        "| case | system | median ms | QPS | speed-up vs faiss |",
        "|---|---|---|---|---|",
    ]
    for group, systems in groups.items():
        base = systems.get("faiss")
        for name, b in sorted(systems.items()):
            med = b["stats"]["median"]
            q = b["extra_info"].get("Q")
            qps = f"{q / med:,.0f}" if q else "-"
            ratio = f"{base['stats']['median'] / med:.2f}x" if base else "-"
            lines.append(f"| {group} | {name} | {med * 1e3:.3f} | {qps} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
