"""The summary as a picture: per-layer parameters, forward FLOPs and activation memory as bar charts, so
"which layer holds the parameters, which the compute, which the memory" reads at a glance.

matplotlib is imported here only, when a plot is asked for; the rest of the inspector does not need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .summary import LayerRow, Summary

# (column, axis label, unit divisor, unit)
PANELS = (
    ("params", "parameters", 1e6, "M"),
    ("flops", "forward FLOPs", 1e9, "G"),
    ("activation_bytes", "activations kept for backward", 2**20, "MiB"),
)


def plotted_rows(summary: Summary) -> list[LayerRow]:
    """The summary's rows that hold any parameters, FLOPs or activation memory (containers' empty rows and
    parameter-free no-ops drop out)."""
    return [r for r in summary.rows if r.name and any(getattr(r, column) for column, *_ in PANELS)]


def plot_summary(summary: Summary, path: str | Path) -> Path:
    """Write a PNG of three bar charts side by side, one bar per layer, the largest of each in red."""
    from matplotlib.figure import Figure

    rows = plotted_rows(summary)
    names = [r.name for r in rows]
    height = max(3.0, 0.22 * len(rows) + 1.6)
    fig = Figure(figsize=(13, height), layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharey=True)
    positions = np.arange(len(rows))
    for ax, (column, label, divisor, unit) in zip(axes, PANELS, strict=True):
        values = np.array([getattr(r, column) for r in rows], dtype=np.float64)
        total = values.sum()
        colours = ["tab:blue"] * len(rows)
        if len(rows) and values.max() > 0:
            colours[int(values.argmax())] = "tab:red"
        ax.barh(positions, values / divisor, color=colours)
        ax.set_xlabel(f"{label} ({unit})", fontsize=9)
        if len(rows) and total > 0:
            top = int(values.argmax())
            ax.set_title(f"most: {names[top]} ({values[top] / total:.0%} of {total / divisor:,.3g} {unit})",
                         fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(positions, names, fontsize=8 if len(rows) <= 40 else 6)
    axes[0].invert_yaxis()  # the first layer on top, as in the table
    mode = "training" if summary.training else "eval"
    size = "x".join(map(str, summary.input_size))
    fig.suptitle(f"{summary.model}: per-layer cost of one {mode} step, batch {summary.batch_size} of {size}, "
                 f"{summary.dtype} (FLOPs = 2 x MACs)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
