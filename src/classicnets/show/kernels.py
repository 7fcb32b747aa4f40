"""The first conv layer's kernels as a grid, grouped by tower: the paper's Fig. 3, with a number.

Krizhevsky et al. (2012, section 6.1, Fig. 3) show the 96 11x11x3 kernels of conv1 and note that the kernels
of GPU 1 came out "largely colour-agnostic" and those of GPU 2 "largely colour-specific". The *colour
specificity* put on each kernel here makes that a number:

    s(w) = ||w - g||^2 / ||w||^2,   g = the mean of w over its input channels, repeated on every channel

``g`` is the kernel's grey part, the one that weighs R, G and B alike (a luminance detector); ``s`` is the
share of the kernel's energy outside it. 0: a colour-agnostic kernel (the same pattern in every channel).
2/3 (for 3 channels): a kernel that reads a single channel. 1: channels that cancel (a colour-opponent kernel,
red against green, with no luminance response). Random kernels with independent channels score
(C-1)/C = 2/3 on average, so trained kernels below that lean grey and above it lean to colour contrasts.
The plain channel mean (not luma weights) is the grey part because the inputs are normalised per channel.
For one input channel there is no colour, and the score is reported as not applicable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..training.logging import first_conv as logged_first_conv
from .common import (
    Picture,
    Subject,
    mosaic,
    new_figure,
    output_paths,
    subject_of,
    without_ticks,
    write_picture,
)

MAX_COLUMNS = 16  # kernels per row: Fig. 3 shows each GPU's 48 kernels in 3 rows of 16


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` of the model and its name, or a clear error for a net without one."""
    named = logged_first_conv(model)
    if named is not None:
        return named
    raise ConfigError(f"{type(model).__name__} has no nn.Conv2d layer, so it has no kernels to show; "
                      "`show kernels` needs a convolutional net (`classicnets models` lists them)")


def tower_count(model: nn.Module, conv: nn.Conv2d) -> int:
    """How many towers read the conv's maps: the ``groups`` of the next conv that takes its output.

    The paper's alexnet (towers=2) reads conv1's 96 maps with a grouped conv2, so maps 0-47 belong to tower 1
    and 48-95 to tower 2, as on the paper's two GPUs; every other net has one tower.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for later in convs[convs.index(conv) + 1:]:
        if later.in_channels == conv.out_channels:
            return later.groups if conv.out_channels % later.groups == 0 else 1
    return 1


def colour_specificity(weight: torch.Tensor) -> torch.Tensor:
    """s(w) = ||w - mean_c(w)||^2 / ||w||^2 per kernel of an (out, C, kh, kw) weight; 0 for a zero kernel.

    See the module's docstring: 0 colour-agnostic, 2/3 one channel only (C = 3), 1 colour-opponent.
    """
    w = weight.detach().double().flatten(2)  # (out, C, kh*kw)
    grey = w.mean(dim=1, keepdim=True)
    energy = w.square().sum(dim=(1, 2))
    return ((w - grey).square().sum(dim=(1, 2)) / energy.clamp(min=1e-300)).where(energy > 0, 0.0).float()


def scaled_kernels(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each kernel mapped to [0, 1] on its own (its channels together, so colours keep their balance):
    (out, kh, kw, 3 or 1) tiles, and each kernel's min and max (tile * (max - min) + min is the weight)."""
    w = weight.detach().double().cpu().numpy()
    low = w.min(axis=(1, 2, 3))
    high = w.max(axis=(1, 2, 3))
    span = np.where(high > low, high - low, 1.0)
    tiles = (w - low[:, None, None, None]) / span[:, None, None, None]
    tiles = tiles.transpose(0, 2, 3, 1)  # channels last, as images are drawn
    if tiles.shape[-1] != 3:  # grey kernels, or channels that are not RGB: their mean, drawn grey
        tiles = tiles.mean(axis=-1, keepdims=True)
    return tiles, low, high


def kernel_grids(tiles: np.ndarray, towers: int) -> list[np.ndarray]:
    """One RGB mosaic per tower of the per-kernel-scaled tiles (white gaps between kernels)."""
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    return [mosaic(part, MAX_COLUMNS, gap=1.0) for part in np.array_split(tiles, towers)]


def kernels(run: str | Path | nn.Module | Any, out: str | Path | None = None) -> Picture:
    """Draw the first conv layer's kernels of a run (or model), grouped by tower, with colour specificity.

    Writes ``kernels.png`` and ``kernels.json`` (layer, shape, towers, per-kernel score and scale, the mean
    score per tower) to ``out`` (a .png path or a directory; default: the run's ``show/``).
    """
    subject = subject_of(run)
    name, conv = first_conv(subject.model)
    weight = conv.weight.detach().float().cpu()
    towers = tower_count(subject.model, conv)
    tiles, low, high = scaled_kernels(weight)
    data = kernel_numbers(subject, name, weight, towers, low, high)
    grids = kernel_grids(tiles, towers)
    png, json_path = output_paths(subject, out, "kernels.png")
    fig = _draw(subject, data, grids)
    return write_picture(fig, png, json_path, data, {f"tower{t + 1}": g for t, g in enumerate(grids)})


def kernel_numbers(subject: Subject, layer: str, weight: torch.Tensor, towers: int, low: np.ndarray,
                   high: np.ndarray) -> dict[str, Any]:
    """The JSON beside the picture; ``low`` and ``high`` are each kernel's scale (:func:`scaled_kernels`)."""
    out_channels, channels = weight.shape[:2]
    colour = channels >= 2
    scores = colour_specificity(weight).tolist() if colour else None
    parts = np.array_split(np.arange(out_channels), towers)
    tower_rows = []
    for t, part in enumerate(parts):
        row = {"tower": t + 1, "kernels": [int(part[0]), int(part[-1])]}
        row["mean_colour_specificity"] = float(np.mean([scores[i] for i in part])) if colour else None
        tower_rows.append(row)
    return {
        "kind": "kernels", "model": subject.name, "checkpoint": subject.source, "layer": layer,
        "weight_shape": list(weight.shape), "towers": tower_rows,
        "colour_specificity": scores,
        "colour_specificity_note": (
            "||w - mean_over_channels(w)||^2 / ||w||^2: 0 colour-agnostic, 2/3 one channel only, "
            "1 colour-opponent; random kernels average (C-1)/C" if colour
            else "not applicable: the input has one channel"),
        "random_kernel_expectation": (channels - 1) / channels if colour else None,
        "kernel_min": low.tolist(), "kernel_max": high.tolist(),
        "display": "each kernel scaled to [0, 1] on its own (its channels together)",
    }


def _draw(subject: Subject, data: dict[str, Any], grids: list[np.ndarray]):
    towers = data["towers"]
    colour = data["colour_specificity"] is not None
    height = sum(g.shape[0] / g.shape[1] * 8 + 0.45 for g in grids) + 0.4 + (2.2 if colour else 0)
    fig = new_figure(8, height)
    panels = fig.subfigures(2 if colour else 1, 1, height_ratios=[height - 2.2, 2.2] if colour else None)
    grid_fig = panels[0] if colour else panels
    axes = np.atleast_1d(grid_fig.subplots(len(grids), 1))
    out_c, in_c, kh, kw = data["weight_shape"]
    for ax, grid, tower in zip(axes, grids, towers, strict=True):
        ax.imshow(grid, interpolation="nearest")
        label = f"tower {tower['tower']}: kernels {tower['kernels'][0]}-{tower['kernels'][1]}" \
            if len(towers) > 1 else f"{out_c} kernels"
        score = (f", mean colour specificity {tower['mean_colour_specificity']:.2f}" if colour
                 else ", colour specificity n/a (grey input)")
        ax.set_title(label + score, fontsize=9)
    without_ticks(axes)
    grid_fig.suptitle(f"{subject.name}: {data['layer']} kernels ({out_c} x {in_c} x {kh} x {kw}), "
                      "each scaled on its own", fontsize=10)
    if colour:
        _draw_scores(panels[1], data)
    return fig


def _draw_scores(fig, data: dict[str, Any]) -> None:
    ax = fig.subplots()
    scores = np.array(data["colour_specificity"])
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for t, tower in enumerate(data["towers"]):
        first, last = tower["kernels"]
        index = np.arange(first, last + 1)
        ax.bar(index, scores[index], width=0.9, color=colours[t % 4], label=f"tower {tower['tower']}")
        ax.hlines(tower["mean_colour_specificity"], first - 0.5, last + 0.5, colors="black", linewidths=1)
    ax.axhline(data["random_kernel_expectation"], color="grey", linestyle=":", linewidth=1,
               label="random kernels")
    ax.set_xlim(-0.5, len(scores) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("kernel (black line: the tower's mean)", fontsize=8)
    ax.set_ylabel("colour specificity", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right", ncol=len(data["towers"]) + 1)
