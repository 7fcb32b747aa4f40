"""Every training setting in one dataclass, the named recipes, and how files and flags override them.

Resolution order, later wins: the dataclass defaults < the recipe < a YAML/TOML config file < flags.
The CLI's flags are generated from the fields below (:func:`add_config_arguments`), so they never drift.

The speed settings precision, channels_last and compile default to what pays on the device
(training/speed.py); a recipe or a flag that names a value wins.

Recipes (``--recipe``):

- ``d2l``: Dive into Deep Learning's run: alexnet_d2l at 224, plain SGD lr 0.01, batch 128, 10 epochs,
  xavier init, no normalisation (about 0.88 test accuracy on Fashion-MNIST).
- ``paper``: Krizhevsky et al. 2012: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10
  when accuracy plateaus (at most three times), the paper's net and init, random crops, flips and PCA colour
  noise, 10-crop testing. Deviation: Fashion-MNIST has no validation split, so the plateau is watched on
  the test set.
- ``fast``: accuracy per second on a GPU: bf16 autocast, channels_last, torch.compile on CUDA, batch 256,
  SGD nesterov with a one-cycle schedule, label smoothing, flips, flip test-time augmentation, 5 epochs.
- ``quick``: what ``make demo`` runs on a 2-core CPU: alexnet_28 (d2l's 28x28 AlexNet, the book's exercise)
  at quarter width (2.9M parameters), bf16 autocast + channels_last, AdamW with a one-cycle schedule,
  batch 256, 2 epochs on all 60,000 images: 0.90 test accuracy (measured 0.901) in about 2 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.augment import AUGMENTS
from ..errors import ConfigError
from ..evaluation import TTA_MODES
from ..registry import parse_model_options

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "plateau", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
INITS = ("model", "xavier")
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS, "augment": AUGMENTS,
           "tta": TTA_MODES, "init": INITS}


def _f(default: Any, help: str, **kwargs) -> Any:
    """A field whose help text is the comment on its default; the CLI shows it."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Every training setting. A comment (the help text) explains each default that is not obvious."""

    # --- what to train, on what
    model: str = _f("alexnet_d2l", "registered model name (`classicnets models` lists them)")
    model_options: dict = _f({}, "options for the model's builder, e.g. {\"width_mult\": 0.5} "
                                 "(JSON or key=value,key=value)")
    dataset: str = _f("fashion-mnist", "dataset name, or a path to an image folder")
    data_dir: str | None = _f(None, "where the dataset lives; None: the usual places, downloading if needed")
    image_size: int | None = _f(None, "side of the square input; None: the model's default input "
                                      "(224 for alexnet_d2l, 28 for alexnet_28)")
    subset: int | None = _f(None, "train on N training images only, balanced across classes (quick runs)")
    normalize: bool = _f(False, "subtract the dataset mean and divide by its std; off as in d2l, "
                                "which feeds pixels in [0, 1]")
    augment: str = _f("none", f"training augmentation: {', '.join(AUGMENTS)}")
    tta: str = _f("none", f"test-time augmentation: {', '.join(TTA_MODES)} (ten-crop is the paper's test)")
    init: str = _f("model", "weight init: 'model' keeps the builder's own (the paper's N(0, 0.01) for "
                            "alexnet, xavier for the d2l nets); 'xavier' re-initialises every conv and "
                            "linear layer with xavier-uniform as d2l's train_ch6 does")

    # --- optimisation
    epochs: int = _f(10, "passes over the training set")
    batch_size: int = _f(128, "global batch: split over processes, and over grad_accum_steps micro-batches")
    eval_batch_size: int | None = _f(None, "batch for evaluation; None: 2 x batch_size (no gradients kept)")
    optimizer: str = _f("sgd", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _f(0.01, "peak learning rate (d2l and the paper: 0.01 for AlexNet; 0.1 diverges)")
    momentum: float = _f(0.0, "SGD momentum (d2l: 0, the paper: 0.9)")
    nesterov: bool = _f(False, "Nesterov momentum for SGD")
    weight_decay: float = _f(0.0, "L2 penalty (the paper: 5e-4); decoupled for adamw")
    betas: tuple = _f((0.9, 0.999), "Adam/AdamW betas")
    schedule: str = _f("constant", f"learning-rate schedule: {', '.join(SCHEDULES)}")
    warmup_epochs: float = _f(0.0, "linear warm-up from lr/100 over this many epochs (not with plateau "
                                   "or onecycle, which warms up by itself)")
    step_epochs: int = _f(30, "step schedule: divide the lr by 1/gamma every this many epochs "
                              "(torchvision's AlexNet recipe: 30)")
    gamma: float = _f(0.1, "factor of each step or plateau drop (the paper: divided by 10)")
    plateau_patience: int = _f(2, "plateau: epochs without a better test accuracy before the lr drops")
    plateau_max_drops: int = _f(3, "plateau: at most this many drops (the paper: three)")
    min_lr: float = _f(0.0, "cosine: the lr at the end of training")
    onecycle_pct: float = _f(0.25, "onecycle: fraction of the steps spent rising to the peak lr")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (0.1 is the usual choice)")
    grad_clip: float | None = _f(None, "clip the global gradient norm to this; None: no clipping")
    grad_accum_steps: int = _f(1, "micro-batches per optimizer step, keeping the global batch when "
                                  "memory or process count forces smaller batches")
    sync_batchnorm: bool = _f(False, "distributed runs: BatchNorm statistics over all processes' batches "
                                     "(SyncBatchNorm; CUDA only) instead of each process's own")

    # --- speed
    device: str = _f("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    precision: str = _f("auto", "bf16: bfloat16 autocast (weights stay fp32); auto: bf16 where the "
                                "hardware has it (AMX or AVX-512 BF16 CPUs, Ampere+ GPUs), else fp32")
    channels_last: bool | None = _f(None, "NHWC memory layout for model and inputs (faster convs with "
                                          "bf16); none: on when the precision is bf16")
    compile: bool | None = _f(False, "torch.compile the model (slower start, faster steps); none: on "
                                     "CUDA only (on the CPUs measured it was slower)")
    cpu_threads: int | None = _f(None, "torch's CPU threads; None: its default, one per core. On a busy "
                                       "machine fewer can be faster (threads wait for each other every op)")
    num_workers: int = _f(2, "worker processes for streaming loaders (in-memory data sets need none)")

    # --- reproducibility
    seed: int = _f(0, "seeds torch, numpy, random and the data order")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms: bitwise repeatable; slower on GPU, "
                                    "where some layers (adaptive pooling) have no deterministic kernel")

    # --- output
    out: str = _f("runs/train", "run directory: checkpoints (last/, best/), logs, curves.png, config.json")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = _f(False, "replace an existing run in --out instead of refusing to")
    log_every: int = _f(50, "steps between progress refreshes and NaN checks (each reads the GPU once)")
    progress: bool = _f(True, "show a progress bar while an epoch runs")
    recipe: str | None = _f(None, "the recipe these settings started from (a label: setting it here applies "
                                  "nothing; from_recipe, --recipe or train(recipe=...) apply one)")

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """The recipe's settings with ``overrides`` on top, e.g. ``from_recipe("d2l", epochs=20)``."""
        return resolve_config(recipe, overrides=overrides)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


# Each recipe: the fields it changes from the defaults. A recipe may pick the default model; its
# model_options then apply only when that model is used (see resolve_config).
RECIPES: dict[str, dict[str, Any]] = {
    "d2l": dict(model="alexnet_d2l", epochs=10, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.0,
                weight_decay=0.0, schedule="constant", init="xavier", normalize=False, augment="none"),
    "paper": dict(model="alexnet", epochs=90, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9,
                  weight_decay=5e-4, schedule="plateau", gamma=0.1, plateau_max_drops=3, init="model",
                  normalize=True, augment="paper", tta="ten-crop"),
    # lr 0.02: the d2l/torchvision 0.01 scaled linearly to batch 256; AlexNet has no BatchNorm and
    # diverges at much more (pytorch/examples#459)
    "fast": dict(model="alexnet_d2l", epochs=5, batch_size=256, optimizer="sgd", lr=0.02, momentum=0.9,
                 nesterov=True, weight_decay=5e-4, schedule="onecycle", onecycle_pct=0.25,
                 label_smoothing=0.1, init="xavier", normalize=True, augment="flip", tta="flip",
                 precision="bf16", channels_last=True, compile=None),
    "quick": dict(model="alexnet_28", model_options={"width_mult": 0.25}, epochs=2, batch_size=256,
                  optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="onecycle", onecycle_pct=0.25,
                  label_smoothing=0.0, init="model", normalize=True, augment="none", tta="none",
                  precision="bf16", channels_last=True),
}


# ------------------------------------------------------------------------------------------- checks


def validate(config: TrainConfig) -> None:
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}{_close(value, choices)}")
    positive = ("epochs", "batch_size", "grad_accum_steps", "log_every", "step_epochs", "plateau_patience")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)} must be at least 1")
    for name in ("lr", "momentum", "weight_decay", "warmup_epochs", "min_lr", "label_smoothing"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}={getattr(config, name)} must not be negative")
    if config.lr == 0:
        raise ConfigError("lr=0 would not train; pass a positive learning rate such as 0.01")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    if not 0 < config.onecycle_pct < 1:
        raise ConfigError(f"onecycle_pct={config.onecycle_pct} must be between 0 and 1")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
        raise ConfigError("nesterov needs optimizer=sgd with momentum > 0 (e.g. --momentum 0.9)")
    if config.warmup_epochs and config.schedule in ("plateau", "onecycle"):
        raise ConfigError(f"warmup_epochs applies to constant, step and cosine schedules; "
                          f"{config.schedule} sets the lr itself: drop --warmup-epochs")
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by "
                          f"grad_accum_steps={config.grad_accum_steps}")
    for name in ("subset", "image_size", "eval_batch_size", "grad_clip", "cpu_threads"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name}={value} must be positive (or None)")
    if not isinstance(config.model_options, dict):
        raise ConfigError(f"model_options must be a mapping such as {{\"width_mult\": 0.5}}, "
                          f"found {config.model_options!r}")
    if len(config.betas) != 2:
        raise ConfigError(f"betas must be two numbers such as [0.9, 0.999], found {config.betas!r}")


def _close(value: Any, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def _check_keys(values: dict[str, Any], source: str) -> None:
    for key in values:
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=3, cutoff=0.5)
            known = ", ".join(FIELD_NAMES)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {known}"
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(name: str, value: Any, source: str) -> Any:
    """A value from a file or flag, checked against the field's type."""
    kind, optional = _field_type(name)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is dict:
            return _parse_mapping(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(float(v) for v in items)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name}={value!r} should be {_type_words(kind, optional)}") from None


def _parse_mapping(value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    text = str(value).strip()
    if text.startswith("{"):
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError
        return parsed
    return parse_model_options(text)  # a ModelOptionError is a TypeError: the caller names the field


def _field_type(name: str) -> tuple[type, bool]:
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return hint, optional


def _type_words(kind: type, optional: bool) -> str:
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             dict: "a mapping such as width_mult=0.5 or {\"width_mult\": 0.5}",
             tuple: "two numbers such as 0.9,0.999"}[kind]
    return words + (" or none" if optional else "")


# ----------------------------------------------------------------------------------- files and flags


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or TOML (.toml) file, keys checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path}: expected .yaml, .yml or .toml, found {path.suffix!r}")
    except ConfigError:
        raise
    except Exception as error:  # the parsers' own error types differ
        raise ConfigError(f"config file {path} does not parse: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, "
                          f"found {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    _check_keys(values, f"config file {path}")
    return {k: _coerce(k, v, f"config file {path}") for k, v in values.items()}


def resolve_config(recipe: str | None = None, file_values: dict[str, Any] | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < recipe < config file < overrides (flags or keyword arguments)."""
    file_values, overrides = dict(file_values or {}), dict(overrides or {})
    recipe = overrides.pop("recipe", None) or file_values.pop("recipe", None) or recipe
    _check_keys(file_values, "config file")
    _check_keys(overrides, "settings")
    values: dict[str, Any] = {}
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}"
                              f"{_close(recipe, RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
    chosen = {**file_values, **overrides}
    if "model" in chosen and chosen["model"] != values.get("model") and "model_options" not in chosen:
        values.pop("model_options", None)  # the recipe's options were for its own model
    values.update(chosen)
    values = {k: _coerce(k, v, "settings") for k, v in values.items()}
    return TrainConfig(**values)


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a saved dict (config.json, a checkpoint), keys and types checked."""
    _check_keys(values, source)
    return TrainConfig(**{k: _coerce(k, v, source) for k, v in values.items()})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help and default; unset flags stay absent from args."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        kind, optional = _field_type(f.name)
        help_text = f"{f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})"
        help_text = help_text.replace("%", "%%")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **common)
        elif f.name in CHOICES:
            parser.add_argument(_flag(f.name), choices=CHOICES[f.name], **common)
        elif f.name == "recipe":
            parser.add_argument(_flag(f.name), choices=list(RECIPES), **common)
        else:
            metavar = {int: "N", float: "X", dict: "K=V,..", tuple: "B1,B2"}.get(kind, f.name.upper())
            parser.add_argument(_flag(f.name), metavar=metavar, **common)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (only those), typed."""
    given = {name: getattr(args, name) for name in FIELD_NAMES if hasattr(args, name)}
    return {name: _coerce(name, value, f"flag {_flag(name)}") for name, value in given.items()}


def format_config(config: TrainConfig) -> str:
    """The resolved settings, one per line, for printing at the start of a run."""
    values = config.to_dict()
    width = max(map(len, values))
    return "\n".join(f"  {name:<{width}}  {json.dumps(value)}" for name, value in values.items())
