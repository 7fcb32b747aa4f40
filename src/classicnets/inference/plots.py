"""The pictures of a run: its training curves (``curves.png``, drawn after every epoch) and the confusion
matrix of an evaluation (``confusion.png``). Both draw on a bare Figure with the Agg canvas: no pyplot state,
so any thread may call them (the trainer draws on its checkpoint thread) and the user's backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CURVES_PNG = "curves.png"


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


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    """A confusion-matrix heat map: rows are true classes, columns predictions, cells the share of the row.

    The diagonal (right answers, often 90%) and the errors (often under 10%) get a colour scale each: on
    one scale the errors would all look alike and faint, and telling them apart is the point of the plot.
    """
    # A bare Figure renders with Agg and leaves pyplot's global state (and the user's backend) alone.
    from matplotlib.figure import Figure

    rows = confusion.sum(axis=1, keepdims=True)
    shares = confusion / np.maximum(rows, 1)
    n = len(classes)
    diagonal = np.eye(n, dtype=bool)
    errors = np.ma.masked_where(diagonal, shares)
    right = np.ma.masked_where(~diagonal, shares)
    worst = max(float(errors.max()) if errors.count() else 0.0, 1e-3)
    side = max(5.0, 0.55 * n + 3.0)
    fig = Figure(figsize=(side + 1.2, side * 0.9), layout="constrained")
    ax = fig.add_subplot()
    error_image = ax.imshow(errors, cmap="Reds", vmin=0.0, vmax=worst)
    right_image = ax.imshow(right, cmap="Greens", vmin=0.0, vmax=1.0)
    fig.colorbar(error_image, ax=ax, fraction=0.046, label="errors: share of the true class")
    fig.colorbar(right_image, ax=ax, fraction=0.046, label="right: share of the true class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8 if n > 10 else 9)
    ax.set_yticks(range(n), classes, fontsize=8 if n > 10 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 20:  # counts stay legible up to about 20 classes
        for i in range(n):
            for j in range(n):
                scale = 1.0 if i == j else worst
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 * scale else "black")
    fig.savefig(path, dpi=120, bbox_inches="tight")
