"""What a run records: the per-epoch line the seeds print, JSONL and CSV logs, and d2l-style curves.

Every file is rewritten from the whole history at the end of each epoch (they are a few kilobytes), so a
resumed run's logs hold exactly the epochs its checkpoint holds, with no duplicates from a killed attempt.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
CONFIG_JSON = "config.json"


def epoch_line(record: dict[str, Any]) -> str:
    """The seeds' line (``epoch 1, loss 0.xxxx, train acc 0.xxx, test acc 0.xxx, time x.x sec``), and below it
    what classicnets adds, indented: two lines that fit 80 columns."""
    top5 = f"test top5 {record['test_top5']:.3f}, " if record.get("test_top5") is not None else ""
    return (f"epoch {record['epoch']}, loss {record['train_loss']:.4f}, train acc {record['train_acc']:.3f}, "
            f"test acc {record['test_acc']:.3f}, time {record['time']:.1f} sec\n"
            f"  {top5}lr {record['lr']:.3g}, {record['images_per_sec']:.0f} img/s")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl (one JSON object per epoch) and metrics.csv (the same, as columns)."""
    write_text_atomic(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in history))
    if history:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(run_dir / METRICS_CSV, buffer.getvalue())


def plot_curves(run_dir: Path, history: list[dict[str, Any]], title: str = "",
                steps: list[tuple[float, ...]] | None = None) -> Path:
    """curves.png: losses (per epoch, and per log_every steps when ``steps`` are given) on the left, train
    and test accuracy on the right, and the learning rate below.

    Drawn on a bare Figure with the Agg canvas (no pyplot state), so any thread may call it; the trainer
    draws on its checkpoint thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    loss_ax, acc_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    lr_ax = fig.add_subplot(grid[1, :])
    if steps:
        loss_ax.plot([s[0] for s in steps], [s[1] for s in steps], "-", color="tab:blue", alpha=0.35, lw=1,
                     label="train loss, every log_every steps")
    # an epoch's mean sits at the epoch's end, where the per-step curve arrives
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train loss")
    if all("test_loss" in r for r in history):
        loss_ax.plot(epochs, [r["test_loss"] for r in history], "s--", color="tab:orange", label="test loss")
    loss_ax.set_ylabel("cross-entropy loss")
    acc_ax.plot(epochs, [r["train_acc"] for r in history], "o-", color="tab:purple", label="train acc")
    acc_ax.plot(epochs, [r["test_acc"] for r in history], "s--", color="tab:green", label="test acc")
    acc_ax.set_ylabel("top-1 accuracy")
    if steps and all(len(s) > 2 for s in steps):
        lr_ax.plot([s[0] for s in steps], [s[2] for s in steps], "-", color="tab:gray", label="lr")
    elif all("lr" in r for r in history):
        lr_ax.plot(epochs, [r["lr"] for r in history], "o-", color="tab:gray", label="lr at the epoch's end")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlim(0, max(epochs[-1], 1) + 0.1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = run_dir / CURVES_PNG
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
