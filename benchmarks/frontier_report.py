"""Report of benchmarks/frontier.py: per data set and thread count, each library's best QPS at 10-recall@10
levels 0.5 ... 0.99 (and its configuration, bytes per vector), sqret's ratio to the best peer; the best
recall each library reaches at equal code size; the recall-QPS curves as PNG.

    python benchmarks/frontier_report.py [results/frontier.json] [results/frontier.md] [results/frontier.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
LIBS = ("sqret", "faiss", "scann")


def best_at(points: list[dict], level: float) -> dict | None:
    ok = [p for p in points if p["recall"] >= level]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def pareto(points: list[dict]) -> list[dict]:
    front, top = [], -1.0
    for p in sorted(points, key=lambda p: -p["qps"]):
        if p["recall"] > top:
            front.append(p)
            top = p["recall"]
    return sorted(front, key=lambda p: p["recall"])


def describe(p: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in p["params"].items())
    return f"{p['config']} ({params}; {p['bytes']:g} B)"


def table(runs: dict) -> list[str]:
    lines = []
    groups = sorted({k.rsplit("/", 1)[0] for k in runs})
    ratios = []
    for g in groups:
        name, threads = g.split("/")
        have = {lib: runs[f"{g}/{lib}"]["points"] for lib in LIBS if f"{g}/{lib}" in runs}
        if "sqret" not in have:
            continue
        n = runs[f"{g}/sqret"]
        plural = "s" * (threads != "1")
        lines += [f"### {name} ({n['n']:,} x {n['d']}, {n['queries']:,} queries), {threads} thread{plural}",
                  "", "| R10@10 >= | sqret best QPS (config) | FAISS best QPS (config) | ScaNN best QPS (config) | "
                  "sqret / best peer |", "|---|---|---|---|---|"]
        for level in LEVELS:
            cells, qps = [], {}
            for lib in LIBS:
                b = best_at(have.get(lib, []), level)
                qps[lib] = b["qps"] if b else None
                cells.append(f"{b['qps']:,.0f} ({describe(b)})" if b else ("-" if lib in have else "not run"))
            peers = [q for lib, q in qps.items() if lib != "sqret" and q]
            if qps["sqret"] and peers:
                ratio = qps["sqret"] / max(peers)
                ratios.append((g, level, ratio))
                rtxt = f"{ratio:.2f}x"
            elif qps["sqret"]:
                rtxt = "only sqret"
            else:
                rtxt = "sqret does not reach it" if peers else "-"
            lines.append(f"| {level} | " + " | ".join(cells) + f" | {rtxt} |")
        top = {lib: max((p["recall"] for p in pts), default=0) for lib, pts in have.items()}
        lines += ["", "Highest recall reached: " + ", ".join(f"{lib} {r:.3f}" for lib, r in top.items()), ""]
        # equal code size, no refinement: the best recall each library reaches per bytes per vector
        codes_only = {lib: [p for p in pts if not refined(p)] for lib, pts in have.items()}
        sizes = sorted({p["bytes"] for pts in codes_only.values() for p in pts})
        rows = []
        for size in sizes:
            best = {lib: max((p["recall"] for p in pts if p["bytes"] == size), default=None)
                    for lib, pts in codes_only.items()}
            if best.get("sqret") is not None and any(v is not None for k, v in best.items() if k != "sqret"):
                rows.append(f"| {size:g} | " + " | ".join("-" if best.get(lib) is None else f"{best[lib]:.3f}"
                                                          for lib in LIBS) + " |")
        if rows:
            lines += ["Best recall at equal code size (bytes per vector, codes only):", "",
                      "| bytes | sqret | FAISS | ScaNN |", "|---|---|---|---|", *rows, ""]
    if ratios:
        worst = min(ratios, key=lambda r: r[2])
        summary = [f"Lowest sqret / best-peer ratio over every level a peer reaches: {worst[2]:.2f}x "
                   f"({worst[0]}, R10@10 >= {worst[1]}); highest {max(r[2] for r in ratios):.2f}x.", "",
                   "sqret's best QPS over the best peer's (FAISS or ScaNN), per 10-recall@10 level:", "",
                   "| data / threads | " + " | ".join(f">= {lv}" for lv in LEVELS) + " |",
                   "|---|" + "---|" * len(LEVELS)]
        for g in groups:
            got = {lv: r for gg, lv, r in ratios if gg == g}
            if got:
                summary.append(f"| {g} | " + " | ".join(f"{got[lv]:.2f}x" if lv in got else "-" for lv in LEVELS)
                               + " |")
        lines[0:0] = summary + [""]
    return lines


def refined(p: dict) -> bool:
    """A configuration that re-ranks with stored vectors (its bytes are more than its codes)."""
    return any(t in p["config"] for t in ("Refine", "RFlat", "reorder"))


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({k.rsplit("/", 1)[0] for k in runs})
    cols = 2
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups, strict=False):
        for lib, style in zip(LIBS, ("-o", "-s", "-^"), strict=True):
            key = f"{g}/{lib}"
            if key in runs:
                front = pareto(runs[key]["points"])
                ax.plot([p["recall"] for p in front], [p["qps"] for p in front], style, ms=3, label=lib)
        ax.set_yscale("log")
        ax.set_xlabel("10-recall@10")
        ax.set_ylabel("QPS")
        ax.set_title(g.replace("/", ", threads "))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "frontier.json"
    md = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".md")
    png = Path(sys.argv[3]) if len(sys.argv) > 3 else src.with_suffix(".png")
    record = json.loads(src.read_text())
    m = record.get("machine", {})
    head = ["# Recall-QPS frontier (`make bench-frontier`)", "",
            f"Machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, Python {m.get('python', '?')}. "
            "QPS: all queries in one call, best of repeats, best of the passes. Each library over its own "
            "configurations (benchmarks/frontier.py).", ""]
    md.write_text("\n".join(head + table(record["runs"])) + "\n")
    plot(record["runs"], png)
    print(md.read_text())


if __name__ == "__main__":
    main()
