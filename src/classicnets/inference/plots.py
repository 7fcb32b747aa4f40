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


def plot_curves(run_dir: Path, history: list[dict[str, Any]], title: str = "") -> Path:
    """curves.png: train loss, train and test accuracy against epoch on one axis, as d2l draws them.

    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, [r["train_loss"] for r in history], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in history], "m--", label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in history], "g-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(epochs[-1], 1) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = run_dir / CURVES_PNG
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    """A confusion-matrix heat map: rows are true classes, columns predictions, cells the share of the row."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and the user's backend) alone.
    from matplotlib.figure import Figure

    rows = confusion.sum(axis=1, keepdims=True)
    shares = confusion / np.maximum(rows, 1)
    n = len(classes)
    side = max(5.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8 if n > 10 else 9)
    ax.set_yticks(range(n), classes, fontsize=8 if n > 10 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 20:  # counts stay legible up to about 20 classes
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.savefig(path, dpi=120, bbox_inches="tight")
