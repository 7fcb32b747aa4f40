"""What every picture needs: the model of a run with its classes and preprocessing, an image read the way
``predict`` reads it, the layers a forward pass runs through, and where the PNG and its JSON go.

A *subject* is a run directory or checkpoint (the model is rebuilt from its header, as ``predict`` does), a
:class:`~classicnets.checkpoint.LoadedCheckpoint`, or a bare ``nn.Module`` (tests, notebooks); a bare module
has no preprocessing, so its images are passed as prepared tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..inference.predict import square_image

# nn containers are looked into; any other module (a conv, a ReLU, a residual or Inception block) is a unit
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Picture:
    """A written picture: the PNG, the JSON of the numbers behind it, those numbers, and the arrays drawn."""

    png: Path
    json: Path
    data: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class Subject:
    """The model to look inside, with what is known about how it was trained."""

    model: nn.Module
    name: str
    classes: list[str]
    preprocessing: Any = None  # checkpoint.Preprocessing, or None for a bare module
    loaded: Any = None  # checkpoint.LoadedCheckpoint, or None for a bare module
    out_dir: Path | None = None  # where pictures go unless told: the run directory

    @property
    def source(self) -> str:
        return str(self.loaded.source) if self.loaded is not None else f"<{type(self.model).__name__}>"


def subject_of(run: str | Path | nn.Module | Any, classes: Sequence[str] | None = None) -> Subject:
    """A run directory, checkpoint file, LoadedCheckpoint or nn.Module as a :class:`Subject` in eval mode."""
    from ..checkpoint import LoadedCheckpoint, load_model

    if isinstance(run, nn.Module):
        info = getattr(run, "info", None)
        name = info.name if info is not None else type(run).__name__
        return Subject(run.eval(), name, list(classes) if classes is not None else [])
    loaded = run if isinstance(run, LoadedCheckpoint) else load_model(run)
    return Subject(loaded.model.eval(), loaded.metadata["model"], loaded.classes, loaded.preprocessing,
                   loaded, loaded.run_dir)


def model_input(subject: Subject, image: str | Path | Any, invert: bool = False) -> torch.Tensor:
    """One image as the model's (1, C, S, S) float input, prepared as ``predict`` prepares it.

    A file path or PIL image goes through predict's own reading and test transform (channels converted,
    centred square, resized, normalised with the run's mean/std). A tensor is taken as already prepared.
    """
    if isinstance(image, torch.Tensor):
        return image.float()[None] if image.dim() == 3 else image.float()
    if subject.preprocessing is None:
        raise ConfigError("a bare model has no preprocessing to read an image file with; pass a run "
                          "directory or checkpoint, or the image as a prepared (C, H, W) tensor")
    from ..inference.prepare import eval_transform

    prep = subject.preprocessing
    return eval_transform(prep)(square_image(image, prep.in_channels, invert)[None])


def image_stem(image) -> str:
    """A file name part for pictures of ``image``."""
    return Path(image).stem if isinstance(image, (str, Path)) else "image"


def viewable(x: torch.Tensor, subject: Subject) -> np.ndarray:
    """A prepared (C, H, W) input back in [0, 1] for display: the run's normalisation undone."""
    x = x.detach().float().cpu()
    prep = subject.preprocessing
    if prep is not None and prep.mean is not None:
        mean = torch.tensor(prep.mean).view(-1, 1, 1)
        std = torch.tensor(prep.std).view(-1, 1, 1)
        x = x * std + mean
    elif prep is None:  # unknown normalisation: stretch to the full range
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def class_index(subject: Subject, target: int | str, num_outputs: int) -> int:
    """A class given by name (case-insensitive) or index, checked against the run's classes."""
    names = subject.classes or [str(i) for i in range(num_outputs)]
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        lowered = [n.lower() for n in names]
        if target.lower() in lowered:
            return lowered.index(target.lower())
        raise ConfigError(f"class {target!r} is not one of the run's classes: {', '.join(names)}; "
                          f"pass a name from that list or an index 0..{len(names) - 1}")
    index = int(target)
    if not 0 <= index < len(names):
        raise ConfigError(f"class index {index} is outside the run's {len(names)} classes "
                          f"(0..{len(names) - 1}: {', '.join(names)})")
    return index


def class_name(subject: Subject, index: int) -> str:
    return subject.classes[index] if index < len(subject.classes) else str(index)


# --------------------------------------------------------------------------------- the layers a pass runs


@dataclass
class LayerCall:
    """A module called in a forward pass: its name, whether it is a unit (not a container), its output."""

    name: str
    module: nn.Module
    unit: bool
    has_conv: bool
    output: torch.Tensor | None = None  # the last output, when it is a tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape[1:]) if self.output is not None else ()


def trunk(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The callable that makes feature maps: ``forward_features`` where the model has one."""
    return getattr(model, "forward_features", None)


def run_recording(model: nn.Module, x: torch.Tensor) -> list[LayerCall]:
    """Run ``x`` through the model's feature trunk (the whole model without one), recording every module
    called, in the order the calls start, with its last output. Nothing stays on the model afterwards."""
    units = _unit_names(model)
    calls: dict[str, LayerCall] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        has_conv = any(isinstance(m, nn.Conv2d) for m in module.modules())

        def pre(_module, _inputs, name=name, module=module, has_conv=has_conv):
            calls.setdefault(name, LayerCall(name, module, name in units, has_conv))

        def post(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                calls[name].output = output

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    forward = trunk(model) or model
    try:
        with torch.no_grad():
            forward(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(calls.values())


def _unit_names(model: nn.Module) -> set[str]:
    """Modules that are not containers and sit under containers only: the layers and blocks of the net."""
    names: set[str] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if isinstance(child, CONTAINERS):
                visit(child, f"{name}.")
            else:
                names.add(name)

    visit(model, "")
    return names


def map_layers(calls: list[LayerCall]) -> list[LayerCall]:
    """The calls whose output is a batch of feature maps (N, C, H, W)."""
    return [c for c in calls if c.output is not None and c.output.dim() == 4]


def block_ends(calls: list[LayerCall]) -> list[LayerCall]:
    """The output of each conv block: units in call order, cut before each unit that holds a conv; a block's
    output is its last unit's (AlexNet: pool1, pool2, relu3, relu4, pool5; ResNet: the stem's pool, then
    every residual block; GoogLeNet: the stem's stages, then every Inception block or pool after it)."""
    ends: list[LayerCall] = []
    current: LayerCall | None = None
    for call in calls:
        if not call.unit or call.output is None or call.output.dim() != 4:
            continue
        if call.has_conv and current is not None:
            ends.append(current)
        if call.has_conv or current is not None:
            current = call
    if current is not None:
        ends.append(current)
    return ends


POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def last_conv_output(calls: list[LayerCall]) -> LayerCall:
    """The last conv block's output before any pooling that ends it (AlexNet: relu5, 13x13 at 227, not
    pool5's 6x6): the finest maps that have seen the whole net's convolutions, Grad-CAM's usual layer."""
    units = [c for c in calls if c.unit and c.output is not None and c.output.dim() == 4]
    convs = [i for i, c in enumerate(units) if c.has_conv]
    if not convs:
        raise ConfigError("the model has no conv layer whose maps a class activation map could use; "
                          "name a layer with feature maps")
    tail = [c for c in units[convs[-1]:] if not isinstance(c.module, POOLS)]
    return tail[-1]


def pick_layers(calls: list[LayerCall], names: Sequence[str]) -> list[LayerCall]:
    """The named layers, or an error listing the valid names."""
    by_name = {c.name: c for c in map_layers(calls)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"unknown layer name(s) {', '.join(map(repr, unknown))}; layers with feature maps "
                          f"are: {', '.join(by_name)}")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------------------------------------- output


def output_paths(subject: Subject, out: str | Path | None, default_name: str) -> tuple[Path, Path]:
    """The PNG path (``out``: a .png file, or a directory to put ``default_name`` in) and its JSON beside it.

    Without ``out``, pictures go to the run directory's ``show/``.
    """
    if out is None:
        if subject.out_dir is None:
            raise ConfigError("a bare model has no run directory to write into; pass out=FILE.png")
        png = subject.out_dir / "show" / default_name
    else:
        out = Path(out)
        png = out if out.suffix.lower() == ".png" else out / default_name
    png.parent.mkdir(parents=True, exist_ok=True)
    return png, png.with_suffix(".json")


def write_picture(fig, png: Path, json_path: Path, data: dict[str, Any],
                  arrays: dict[str, np.ndarray] | None = None, dpi: int = 110) -> Picture:
    data = {**data, "files": {"png": str(png), "json": str(json_path)}}
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return Picture(png, json_path, data, arrays or {})


def mosaic(tiles: np.ndarray, columns: int, gap: float = np.nan) -> np.ndarray:
    """(N, H, W[, 3]) tiles in a grid of ``columns``, row by row, one ``gap`` pixel between tiles.

    Tile i sits at rows ``r*(H+1) .. r*(H+1)+H``, columns ``c*(W+1) ..`` with ``r, c = divmod(i, columns)``.
    """
    n, h, w = tiles.shape[:3]
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, *tiles.shape[3:]), gap, dtype=np.float64)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
    return grid


def show_image(ax, image: np.ndarray, **options) -> None:
    """A viewable image (:func:`viewable`: H x W grey or H x W x 3 in [0, 1]) on ``ax``, grey as grey."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, **options)


def without_ticks(axes) -> None:
    """No tick marks or numbers on these axes: pictures, not plots."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def new_figure(width: float, height: float):
    """A bare Figure (Agg): leaves pyplot's global state and the user's backend alone."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")
