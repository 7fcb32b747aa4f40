"""The model registry: builders keyed by name, each with the metadata the CLI, inspector and trainer read.

A family module registers each builder with ``@register_model(ModelInfo(...))``; users call
``create_model("alexnet", num_classes=10, in_channels=1)`` and ``list_models("resnet*")``.
Unknown names and unknown options fail with the close matches, so a typo never builds the wrong net.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn as nn

from .errors import ClassicnetsError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(ClassicnetsError, KeyError):
    """An unknown model name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelOptionError(ClassicnetsError, TypeError):
    """An option the model's builder does not take; the message lists the ones it does."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and what it expects. Sizes are (channels, height, width) for 3 input channels."""

    paper: str
    year: int
    default_input: tuple[int, int, int] = (3, 224, 224)
    min_input: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    family: str = ""
    deviations: tuple[str, ...] = ()  # where and why the net differs from the paper
    name: str = ""  # filled in by register_model

    def for_channels(self, in_channels: int) -> ModelInfo:
        """The same info for another number of input channels (mean/std repeated or averaged)."""
        if in_channels == self.default_input[0]:
            return self
        mean = _fit_stats(self.mean, in_channels)
        std = _fit_stats(self.std, in_channels)
        return replace(
            self,
            default_input=(in_channels, *self.default_input[1:]),
            min_input=(in_channels, *self.min_input[1:]),
            mean=mean,
            std=std,
        )


def _fit_stats(stats: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(stats) == channels:
        return stats
    if channels == 1:
        return (sum(stats) / len(stats),)
    return tuple(stats[i % len(stats)] for i in range(channels))


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    info: ModelInfo
    options: frozenset[str] = field(default_factory=frozenset)
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}


def register_model(info: ModelInfo) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder`` under its function name. Duplicate names are a programming error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = [p for p in inspect.signature(builder).parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        missing = {"num_classes", "in_channels"} - {p.name for p in params}
        if missing:
            raise TypeError(f"builder {name!r} must take {sorted(missing)}")
        options = frozenset(p.name for p in params)
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        _REGISTRY[name] = _Entry(builder, replace(info, name=name), options, defaults)
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_zoo_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The metadata of a registered model."""
    return _entry(name).info


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, **options
) -> nn.Module:
    """Build a registered model on the CPU in float32.

    ``num_classes`` and ``in_channels`` default to the builder's own defaults (1000 classes and
    3 channels for ImageNet nets, 10 classes and 1 channel for d2l's Fashion-MNIST nets).
    The model carries its metadata as ``model.info`` (a :class:`ModelInfo` for its ``in_channels``).
    """
    entry = _entry(name)
    check_model_options(name, options)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ModelOptionError(f"{key} must be a positive whole number; got {value!r}")
    if num_classes is not None:
        options["num_classes"] = num_classes
    if in_channels is not None:
        options["in_channels"] = in_channels
    model = entry.builder(**options)
    model.info = entry.info.for_channels(options.get("in_channels", entry.defaults["in_channels"]))
    return model


def check_model_options(name: str, options: dict) -> None:
    """Refuse options the builder does not take, and values of another type than its default's (a number
    for width_mult, true/false for a switch), with a :class:`ModelOptionError` naming the option; the
    builders check the ranges (width_mult in (0, 8], dropout in [0, 1)...)."""
    entry = _entry(name)
    unknown = sorted(set(options) - entry.options)
    if unknown:
        raise ModelOptionError(_unknown_option_message(name, unknown, entry.options))
    for key, value in options.items():
        default = entry.defaults.get(key)
        if default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ModelOptionError(f"model {name!r}: option {key}={value!r} should be "
                                   f"{_kind_words(default)} like its default {default!r}")
    if "width_mult" in options:
        check_width_mult(options["width_mult"])


# Bounds that keep a typo from allocating the machine (a training setting, a checkpoint's header): a side of
# 4,096 px is 18x the 224 of the classic nets (one float32 batch of 128 such 3-channel images is 25 GB).
MAX_IMAGE_SIZE = 4096

# 8x the channels is 64x the weights of most layers (AlexNet: 3.7 billion parameters, 15 GB): any wider
# is a typo, and a checkpoint header asking for more would make a reader allocate before any check.
MAX_WIDTH_MULT = 8.0


def check_width_mult(width_mult: object) -> float:
    """A width multiplier in (0, MAX_WIDTH_MULT], or :class:`ConfigError`."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not (
            0 < width_mult <= MAX_WIDTH_MULT):
        raise ConfigError(f"width_mult must be a number in (0, {MAX_WIDTH_MULT:g}]; got {width_mult!r}: "
                          "use e.g. 0.25 (quarter width) or 1 (the paper's width)")
    return float(width_mult)



def _kind_words(default: object) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a finite number"
    return f"a {type(default).__name__}"


def model_defaults(name: str) -> dict:
    """The builder's default options, e.g. ``{"num_classes": 10, "in_channels": 1, ...}``."""
    return dict(_entry(name).defaults)


def parse_model_options(text: str) -> dict[str, Any]:
    """``"width_mult=0.5,towers=1"`` -> ``{"width_mult": 0.5, "towers": 1}``: the one KEY=VALUE syntax of
    model options (train's ``--model-options``, summary's ``--option``). Values: true/false (any case),
    JSON numbers and null, anything else the text itself."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ModelOptionError("model options are KEY=VALUE[,KEY=VALUE...], e.g. "
                                   f"width_mult=0.5,towers=1; got {text!r}")
        options[key] = _option_value(raw.strip())
    return options


def _option_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _entry(name: str) -> _Entry:
    _ensure_zoo_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint} (`classicnets models` lists all {len(_REGISTRY)})"
        ) from None


def _unknown_option_message(name: str, unknown: list[str], known: frozenset[str]) -> str:
    parts = []
    for option in unknown:
        close = difflib.get_close_matches(option, known, n=3, cutoff=0.5)
        parts.append(f"{option!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    accepted = ", ".join(sorted(known - {"num_classes", "in_channels"}))
    return f"model {name!r} has no option {', '.join(parts)}; it accepts: {accepted}"


def _ensure_zoo_loaded() -> None:
    # The family modules register on import; importing here keeps `registry` free of a
    # static dependency on `models` (models import registry, not the other way round).
    import importlib

    importlib.import_module("classicnets.models")
