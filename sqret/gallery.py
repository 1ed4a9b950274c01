"""Pictures of a retrieval run: queries beside their top retrieved images (correct / wrong marked), and the
training curves of a JSON-lines log of ``sqret train``."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _image(x: torch.Tensor):
    """[C, H, W] uint8 or float in [0, 1] -> an array matplotlib shows ([H, W] gray or [H, W, 3])."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def save_gallery(path: str | Path, queries: torch.Tensor, query_labels: torch.Tensor, database: torch.Tensor,
                 database_labels: torch.Tensor, ranked: torch.Tensor, *, rows: int = 8, top: int = 10) -> Path:
    """A PNG grid: each row a query [C, H, W] (first column) and its ``top`` retrieved database images,
    framed green when the label matches the query's, red when not. ranked [Q, >= top] database positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, queries.shape[0])
    top = min(top, ranked.shape[1])
    fig, axes = plt.subplots(rows, top + 1, figsize=(1.1 * (top + 1), 1.15 * rows), squeeze=False)
    for r in range(rows):
        cells = [(queries[r], None)] + [(database[int(j)], bool(database_labels[int(j)] == query_labels[r]))
                                        for j in ranked[r, :top] if int(j) >= 0]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            img, ok = cells[c]
            ax.imshow(_image(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            color = "black" if ok is None else ("tab:green" if ok else "tab:red")
            for side in ax.spines.values():
                side.set_color(color)
                side.set_linewidth(1.5 if ok is None else 3)
            if r == 0:
                ax.set_title("query" if c == 0 else str(c), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curves(log: str | Path, path: str | Path) -> Path:
    """Loss, learning rate and validation mAP per epoch from a ``sqret train --log`` file, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = []
    for n, line in enumerate(Path(log).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{log}: line {n} is not JSON ({err.msg})") from None
        if isinstance(rec, dict) and "epoch" in rec:
            epochs.append(rec)
    if not epochs:
        raise ValueError(f"{log}: no epoch records (is it a log written by sqret train --log?)")
    vals = sorted({k for r in epochs for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 2 + bool(vals), figsize=(4 * (2 + bool(vals)), 3), squeeze=False)
    x = [r["epoch"] for r in epochs]
    axes[0, 0].plot(x, [r["loss"] for r in epochs], marker="o")
    axes[0, 0].set(title="loss", xlabel="epoch")
    axes[0, 1].plot(x, [r["lr"] for r in epochs], marker="o")
    axes[0, 1].set(title="learning rate", xlabel="epoch")
    for k in vals:
        pts = [(r["epoch"], r[k]) for r in epochs if k in r]
        axes[0, 2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k[4:])
        axes[0, 2].set(title="validation", xlabel="epoch")
        axes[0, 2].legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
