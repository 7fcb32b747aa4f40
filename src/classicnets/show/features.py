"""Feature maps of one image at chosen layers (default: the output of each conv block)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..inference.predict import source_name
from .common import (
    LayerCall,
    Picture,
    block_ends,
    image_stem,
    model_input,
    mosaic,
    new_figure,
    output_paths,
    pick_layers,
    run_recording,
    show_image,
    subject_of,
    viewable,
    without_ticks,
    write_picture,
)

MAX_MAPS = 16  # maps drawn per layer: the most active ones, so a panel stays legible


def feature_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None) -> list[LayerCall]:
    """The layers' outputs for input ``x`` (1, C, H, W): the named ones, or each conv block's output."""
    calls = run_recording(model, x)
    chosen = pick_layers(calls, layers) if layers else block_ends(calls)
    if not chosen:
        raise ConfigError(f"{type(model).__name__} has no conv block whose feature maps could be shown; "
                          "name layers with --layers")
    return chosen


def features(run: str | Path | nn.Module | Any, image: str | Path | Any, out: str | Path | None = None, *,
             layers: Sequence[str] | None = None, max_maps: int = MAX_MAPS, invert: bool = False) -> Picture:
    """Draw the feature maps of ``image`` at ``layers`` (module names; default: after each conv block).

    Each panel shows the layer's ``max_maps`` most active maps (highest mean), on the layer's own colour
    scale, titled with the layer's name and output shape. Writes ``features-IMAGE.png`` and ``.json``.
    """
    if max_maps < 1:
        raise ConfigError(f"max_maps must be >= 1; got {max_maps}")
    subject = subject_of(run)
    x = model_input(subject, image, invert)
    chosen = feature_maps(subject.model, x, layers)
    rows, arrays = [], {}
    for call in chosen:
        maps = call.output[0].detach().float().cpu()
        means = maps.mean(dim=(1, 2))
        order = means.argsort(descending=True)[:max_maps]
        arrays[call.name] = maps[order].numpy()
        rows.append({"layer": call.name, "type": type(call.module).__name__, "shape": list(call.shape),
                     "channels_shown": order.tolist(), "channel_means": means[order].tolist(),
                     "max": float(maps.max()), "min": float(maps.min())})
    png, json_path = output_paths(subject, out, f"features-{image_stem(image)}.png")
    data = {"kind": "features", "model": subject.name, "checkpoint": subject.source,
            "image": source_name(image), "input_shape": list(x.shape[1:]), "layers": rows,
            "display": f"per layer: its {max_maps} most active maps (highest mean), on one colour scale"}
    fig = _draw(subject, viewable(x[0], subject), data["input_shape"], rows, arrays)
    return write_picture(fig, png, json_path, data, arrays)


def _draw(subject, shown: np.ndarray, input_shape: list[int], rows: list[dict],
          arrays: dict[str, np.ndarray]):
    from matplotlib import colormaps

    panels = len(rows) + 1
    columns = min(3, panels)
    lines = math.ceil(panels / columns)
    fig = new_figure(4 * columns, 3.9 * lines)
    axes = np.atleast_1d(fig.subplots(lines, columns)).ravel()
    show_image(axes[0], shown)
    axes[0].set_title(f"input ({' x '.join(map(str, input_shape))})", fontsize=9)
    for ax, row in zip(axes[1:], rows, strict=False):
        maps = arrays[row["layer"]]
        grid = mosaic(maps, math.ceil(math.sqrt(len(maps))))
        low = 0.0 if row["min"] >= 0 else row["min"]
        flat = row["max"] <= low  # every map constant (a dead layer): keep a readable scale
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=colormaps["viridis"].with_extremes(bad="white"),
                          vmin=low, vmax=low + 1 if flat else row["max"], interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        shape = " x ".join(map(str, row["shape"]))
        note = f", all {row['max']:g}" if flat else ""
        ax.set_title(f"{row['layer']} ({row['type']})\n{shape}, {len(maps)} of {row['shape'][0]} maps{note}",
                     fontsize=9)
    without_ticks(axes)
    for ax in axes[panels:]:
        ax.set_axis_off()
    fig.suptitle(f"{subject.name}: feature maps, most active first", fontsize=10)
    return fig

