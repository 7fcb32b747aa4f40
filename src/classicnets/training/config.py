"""Every training setting in one dataclass, the named recipes, and how files and flags override them.

Resolution order, later wins: the dataclass defaults < the recipe < a YAML/TOML config file < flags.
The CLI's flags are generated from the fields below (:func:`add_config_arguments`), so they never drift.

The speed settings precision, channels_last and compile default to what pays on the device
(training/speed.py); a recipe or a flag that names a value wins.

Recipes (``--recipe``):

- ``default``, used when no recipe is named: the field defaults (d2l's AlexNet at 224, SGD lr 0.01, batch
  128, 10 epochs) with momentum 0.9 and normalised inputs. On an unseen folder of 10 Fashion-MNIST classes
  as PNGs (1,400 images, 4 epochs, alexnet_28 at quarter width; 2-core AMD EPYC) d2l's plain SGD on
  [0, 1] pixels reached 0.267 test accuracy (loss 2.29, chance's 2.30), these two changes 0.723
  (docs/reliability.md; tests/test_validation.py::test_a_new_folder_learns_with_the_default_settings).
- ``d2l``: Dive into Deep Learning's run: alexnet_d2l at 224, plain SGD lr 0.01, batch 128, 10 epochs,
  xavier init, no normalisation (about 0.88 test accuracy on Fashion-MNIST).
- ``paper``: Krizhevsky et al. 2012: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10
  when accuracy plateaus (at most three times), the paper's net and init, random crops, flips and PCA colour
  noise, 10-crop testing. Deviation: Fashion-MNIST has no validation split, so the plateau is watched on
  the test set.
- ``fast``: accuracy per second on a GPU: bf16 autocast, channels_last, torch.compile on CUDA, batch 256,
  SGD nesterov with a one-cycle schedule, label smoothing, flips, flip test-time augmentation, 5 epochs.
- ``finetune``: start from ImageNet weights (``--weights``) on a small folder of photos: resnet18 at 224,
  SGD momentum 0.9, lr 0.01 for the new head and 0.1x that for the backbone, which stays frozen (BatchNorm
  statistics too) for the first epoch while the head learns, cosine schedule, Inception-style random
  resized crops and flips, normalised with the weights' ImageNet mean/std, batch 16, 5 epochs.
- ``quick``: what ``make demo`` runs on a 2-core CPU: alexnet_28 (d2l's 28x28 AlexNet, the book's exercise)
  at quarter width (2.9M parameters), the auto speed settings (bf16 + channels_last where the CPU has bf16
  arithmetic), AdamW with a one-cycle schedule, batch 256, 2 epochs on all 60,000 images: 0.90 test
  accuracy (measured 0.901) in about 2 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..data.augment import AUGMENTS
from ..data.formats import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, refuse_url
from ..evaluation import TTA_MODES
from ..registry import MAX_IMAGE_SIZE, parse_model_options

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "plateau", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
INITS = ("model", "xavier")
ON_BAD = ("skip", "error")
LOG_TO = ("files", "tensorboard")
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS, "augment": AUGMENTS,
           "tta": TTA_MODES, "init": INITS, "on_bad": ON_BAD, "log_to": LOG_TO}


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
    dataset: str = _f("fashion-mnist", "dataset name, or a path to an image folder or a prepared store")
    data_dir: str | None = _f(None, "where the dataset lives; None: the usual places, downloading if needed")
    image_size: int | None = _f(None, "side of the square input; None: the model's default input "
                                      "(224 for alexnet_d2l, 28 for alexnet_28)")
    subset: int | None = _f(None, "train on N training images only, balanced across classes (quick runs)")
    test_subset: int | None = _f(None, "test on N test images only, balanced across classes, the same for "
                                       "every seed (quick runs); None: the whole test split")
    normalize: bool = _f(False, "subtract the dataset mean and divide by its std (the default recipe); "
                                "off in d2l's, which feeds pixels in [0, 1]")
    augment: str = _f("none", f"training augmentation: {', '.join(AUGMENTS)}")
    tta: str = _f("none", f"test-time augmentation: {', '.join(TTA_MODES)} (ten-crop is the paper's test)")
    on_bad: str = _f("skip", "image folders: 'skip' skips unreadable or non-image files and counts them "
                             "(a warning each epoch); 'error' stops at the first one")
    max_pixels: int | None = _f(DEFAULT_MAX_PIXELS, "image folders: refuse images with more pixels than this "
                                                    "before decoding them (a decompression-bomb guard); "
                                                    "none: no limit")
    init: str = _f("model", "weight init: 'model' keeps the builder's own (the paper's N(0, 0.01) for "
                            "alexnet, xavier for the d2l nets); 'xavier' re-initialises every conv and "
                            "linear layer with xavier-uniform as d2l's train_ch6 does")
    weights: str | None = _f(None, "start from these weights: a torchvision/timm-style .pth/.pt state_dict "
                                   "(read without running code), a .safetensors file or a classicnets run "
                                   "directory; a classifier for another number of classes is re-initialised")
    freeze_epochs: int = _f(0, "train only the head (the classifier) for the first N epochs, the backbone "
                               "and its BatchNorm statistics frozen; -1: for the whole run")
    backbone_lr_mult: float = _f(1.0, "the backbone's learning rate as a fraction of lr (the head's); 0.1 "
                                      "is usual when fine-tuning pretrained weights")

    # --- optimisation
    epochs: int = _f(10, "passes over the training set")
    batch_size: int = _f(128, "global batch: split over processes, and over grad_accum_steps micro-batches")
    eval_batch_size: int | None = _f(None, "batch for evaluation; None: 2 x batch_size (no gradients kept)")
    optimizer: str = _f("sgd", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _f(0.01, "peak learning rate (d2l and the paper: 0.01 for AlexNet; 0.1 diverges)")
    momentum: float = _f(0.0, "SGD momentum (d2l: 0; the paper and the default recipe: 0.9)")
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
    out: str | None = _f(None, "run directory: checkpoints (last/, best/), logs, curves.png, config.json; "
                               "None: runs/RECIPE (runs/default when no recipe is named)")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint, with the settings it "
                             "saved (flags change only what they name)")
    overwrite: bool = _f(False, "replace an existing run in --out instead of refusing to (the old run is "
                                "kept until the new one saves its first checkpoint)")
    log_every: int = _f(50, "steps between progress refreshes and NaN checks (each reads the GPU once)")
    progress: bool = _f(True, "show a progress bar while an epoch runs")
    log_to: str = _f("files", "files: metrics.jsonl/csv and curves.png; tensorboard: those and TensorBoard "
                              "events in OUT/tensorboard (pip install 'classicnets[tensorboard]')")
    recipe: str | None = _f(None, "the recipe these settings started from (a label: setting it here applies "
                                  "nothing; from_recipe, --recipe or train(recipe=...) apply one)")

    def __post_init__(self) -> None:
        for f in fields(self):  # "none" unsets an optional setting here as in flags and files
            value = getattr(self, f.name)
            if isinstance(value, str) and value.lower() in NONE_WORDS and _field_type(f.name)[1]:
                setattr(self, f.name, None)
        if self.out is None:
            self.out = default_out(self.recipe, self.model)
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
DEFAULT_RECIPE = "default"
RECIPES: dict[str, dict[str, Any]] = {
    # what a run gets when it names no recipe: settings that learn on a user's data, not only on
    # Fashion-MNIST (momentum and normalisation: the paper's; see the module's docstring)
    "default": dict(momentum=0.9, normalize=True),
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
    # torchvision's fine-tuning practice on a small folder: the new head at lr 0.01 with momentum, the
    # pretrained backbone 10x slower after one epoch frozen (so the random head's first, large gradients
    # never reach it), ImageNet statistics (normalize uses the weights' own), crops like ImageNet training.
    # batch 16: a folder of a few dozen photos still gives several steps an epoch
    "finetune": dict(model="resnet18", epochs=5, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9,
                     weight_decay=1e-4, schedule="cosine", freeze_epochs=1, backbone_lr_mult=0.1,
                     normalize=True, augment="resized-crop-flip", tta="none", init="model", image_size=224),
    "quick": dict(model="alexnet_28", model_options={"width_mult": 0.25}, epochs=2, batch_size=256,
                  optimizer="adamw", lr=3e-3, weight_decay=0.05, schedule="onecycle", onecycle_pct=0.25,
                  label_smoothing=0.0, init="model", normalize=True, augment="none", tta="none"),
}


# One line each, for `classicnets recipes`; "GPU-sized" recipes take hours on a 2-core CPU.
RECIPE_NOTES: dict[str, str] = {
    "d2l": "d2l's AlexNet run, SGD at 224 px (0.88); GPU-sized",
    "paper": "Krizhevsky et al. 2012, for image folders; GPU-sized",
    "fast": "one-cycle, bf16, flips (0.92); GPU-sized",
    "quick": "make demo: 1/4-width, 28 px (0.90); minutes on a CPU",
    "default": "no recipe named: momentum 0.9, normalised",
    "finetune": "--weights on a small folder, head first",
}


def default_out(recipe: str | None, model: str) -> str:
    """Where a run goes unless told: runs/RECIPE, so each recipe's run has its own folder."""
    return f"runs/{recipe or model}"


# ------------------------------------------------------------------------------------------- checks


MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which seed_everything also drives, takes 32 bits
_AT_LEAST_1 = ("epochs", "batch_size", "grad_accum_steps", "log_every", "step_epochs", "plateau_patience")
_OPTIONAL_AT_LEAST_1 = ("subset", "test_subset", "eval_batch_size", "cpu_threads", "max_pixels")
_NOT_NEGATIVE = ("plateau_max_drops", "num_workers")
_FRACTIONS = {"momentum": "[0, 1)", "label_smoothing": "[0, 1)", "onecycle_pct": "(0, 1)", "gamma": "(0, 1]"}


def validate(config: TrainConfig) -> None:
    """Every field's type and range, checked once, here: a bad value fails before anything runs, with a
    ConfigError that names the setting, the accepted range and what was found."""
    _check_types(config)
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}{_close(value, choices)}")
    if config.recipe is not None and (not isinstance(config.recipe, str) or config.recipe not in RECIPES):
        raise ConfigError(f"recipe={config.recipe!r} is not one of {', '.join(RECIPES)}"
                          f"{_close(config.recipe, RECIPES)}")
    for name in _AT_LEAST_1:
        _require(name, getattr(config, name) >= 1, "at least 1", getattr(config, name))
    for name in _OPTIONAL_AT_LEAST_1:
        value = getattr(config, name)
        _require(name, value is None or value >= 1, "at least 1 (or none)", value)
    for name in _NOT_NEGATIVE:
        _require(name, getattr(config, name) >= 0, "0 or more", getattr(config, name))
    _require("seed", 0 <= config.seed <= MAX_SEED, f"between 0 and {MAX_SEED}", config.seed)
    _require("image_size", config.image_size is None or 1 <= config.image_size <= MAX_IMAGE_SIZE,
             f"between 1 and {MAX_IMAGE_SIZE} pixels (or none for the model's default)", config.image_size)
    if not config.lr > 0:
        raise ConfigError(f"lr={config.lr} would not train; pass a positive learning rate such as 0.01")
    for name in ("weight_decay", "warmup_epochs", "min_lr"):
        _require(name, getattr(config, name) >= 0, "0 or more", getattr(config, name))
    _require("grad_clip", config.grad_clip is None or config.grad_clip > 0, "positive (or none: no clipping)",
             config.grad_clip)
    low_open = {"onecycle_pct", "gamma"}
    for name, words in _FRACTIONS.items():
        value = getattr(config, name)
        low_ok = value > 0 if name in low_open else value >= 0
        high_ok = value <= 1 if words.endswith("]") else value < 1
        _require(name, low_ok and high_ok, f"in {words}", value)
    for beta in config.betas:
        _require("betas", 0 <= beta < 1, "two numbers in [0, 1) such as 0.9,0.999", config.betas)
    if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
        raise ConfigError("nesterov needs optimizer=sgd with momentum > 0 (e.g. --momentum 0.9)")
    if config.warmup_epochs and config.schedule in ("plateau", "onecycle"):
        raise ConfigError(f"warmup_epochs applies to constant, step and cosine schedules; "
                          f"{config.schedule} sets the lr itself: drop --warmup-epochs")
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by "
                          f"grad_accum_steps={config.grad_accum_steps}")
    for name in ("model", "dataset", "out", "device"):
        _require(name, getattr(config, name).strip() != "", "a non-empty string", getattr(config, name))
    for name in ("dataset", "data_dir", "out"):
        if getattr(config, name) is not None:
            refuse_url(getattr(config, name), name, ConfigError)
    from ..registry import check_model_options  # the builders' own option checks, without building

    check_model_options(config.model, config.model_options)
    if config.freeze_epochs < -1:
        raise ConfigError(f"freeze_epochs={config.freeze_epochs}: use 0 (never), N (the first N epochs) "
                          "or -1 (the whole run)")
    if not 0 <= config.backbone_lr_mult <= 1e3:
        raise ConfigError(f"backbone_lr_mult={config.backbone_lr_mult} must be a factor >= 0 such as 0.1")


def _require(name: str, ok: bool, words: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} must be {words}")


def _check_types(config: TrainConfig) -> None:
    """The value of each field has the field's type (a TrainConfig built in Python skips the parsing of
    files and flags), and every number is finite: nan and inf pass every comparison the ranges make."""
    for name in FIELD_NAMES:
        value = getattr(config, name)
        kind, optional = _field_type(name)
        if value is None and optional:
            continue
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
            setattr(config, name, value)
        if kind is float and _is_real(value):
            value = float(value)  # an int where a float is due (lr=1 in YAML) is the same setting
            setattr(config, name, value)
        if not _has_type(value, kind):
            raise ConfigError(f"{name}={value!r} should be {_type_words(kind, optional)}")
        numbers = value if kind is tuple else (value,) if kind is float else ()
        if not all(math.isfinite(v) for v in numbers):
            raise ConfigError(f"{name}={value!r} must be a finite number, not nan or inf")
    if len(config.betas) != 2:
        raise ConfigError(f"betas must be two numbers such as 0.9,0.999; found {config.betas!r}")
    reserved = {"num_classes", "in_channels"} & set(config.model_options)
    if reserved:
        raise ConfigError(f"model_options cannot set {', '.join(sorted(reserved))}: the dataset decides them")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return _is_real(value)
    if kind is tuple:
        return isinstance(value, tuple) and all(_is_real(v) for v in value)
    return isinstance(value, kind)


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
NONE_WORDS = ("none", "null")  # what unsets an optional setting, in any case


def _coerce(name: str, value: Any, source: str) -> Any:
    """A value from a file or flag, checked against the field's type."""
    kind, optional = _field_type(name)
    if value is None or (isinstance(value, str) and value.lower() in NONE_WORDS and optional):
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


@functools.cache
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
             tuple: "two numbers such as 0.9,0.999"}.get(kind, f"a {getattr(kind, '__name__', kind)}")
    return words + (" or none" if optional else "")


# ----------------------------------------------------------------------------------- files and flags


# What a run did with its folder, not how it trained: a run's saved config.json used as --config leaves them
# to the command line.
RUN_ACTIONS = ("resume", "overwrite")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml), TOML (.toml) or JSON file (a run's own config.json), keys checked.

    A JSON file's ``resume`` and ``overwrite`` are dropped: they are what that run did, not its settings.
    """
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
        elif path.suffix == ".json":
            values = json.loads(text)
            if isinstance(values, dict):
                values = {k: v for k, v in values.items() if k not in RUN_ACTIONS}
        else:
            raise ConfigError(f"config file {path}: expected .yaml, .yml, .toml or .json (a run's "
                              f"config.json), found {path.suffix!r}")
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
                   overrides: dict[str, Any] | None = None, *, override_source: str = "argument",
                   file_source: str = "config file") -> TrainConfig:
    """Defaults < recipe < config file < overrides (flags or keyword arguments). With no recipe named
    anywhere, the ``default`` recipe applies (a TrainConfig built directly holds the bare field defaults).

    With ``resume``, a run folder that holds a config.json is continued with those saved settings; the
    config file and the overrides change only what they name. The result's ``sources`` maps each setting
    that is not a default to where it came from (for :func:`format_config`).
    """
    file_values, overrides = dict(file_values or {}), dict(overrides or {})
    named = overrides.pop("recipe", None) or file_values.pop("recipe", None) or recipe
    _check_keys(file_values, "config file")
    _check_keys(overrides, "settings")
    chosen = {**file_values, **overrides}
    sources = {k: file_source for k in file_values} | {k: override_source for k in overrides}
    saved = _saved_run_settings(named, chosen)
    recipe = named or DEFAULT_RECIPE
    values: dict[str, Any] = {}
    if saved is not None:
        values.update(saved)
        sources = {k: "saved run" for k in saved} | sources
    else:
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}"
                              f"{_close(recipe, RECIPES)}")
        values.update(RECIPES[recipe])
        values["recipe"] = recipe
        sources = {k: f"recipe {recipe}" for k in values} | sources
    if "model" in chosen and chosen["model"] != values.get("model") and "model_options" not in chosen:
        values.pop("model_options", None)  # the recipe's options were for its own model
        sources.pop("model_options", None)
    values.update(chosen)
    values = {k: _coerce(k, v, "settings") for k, v in values.items()}
    config = TrainConfig(**values)
    config.sources = sources  # not a field: where the settings came from, for printing
    return config


def _saved_run_settings(recipe: str | None, chosen: dict[str, Any]) -> dict[str, Any] | None:
    """The settings a run saved in OUT/config.json, when ``chosen`` resumes that run; else None."""
    if not _coerce("resume", chosen.get("resume", False), "settings"):
        return None
    out = chosen.get("out")  # checked here: it is read before the settings as a whole are
    out = _coerce("out", out, "settings") if out else default_out(recipe or DEFAULT_RECIPE,
                                                                   chosen.get("model") or _default("model"))
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--resume: {path} does not parse ({error}); pass the settings again with "
                          "--recipe and flags, or --config FILE") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} is not a mapping of settings")
    saved = {k: v for k, v in saved.items() if k not in RUN_ACTIONS}
    _check_keys(saved, str(path))
    if recipe is not None and saved.get("recipe") not in (None, recipe):
        raise ConfigError(f"--resume: {out} was trained with recipe {saved.get('recipe')!r}, not {recipe!r}; "
                          "drop --recipe (a resumed run keeps its saved settings) or choose another --out")
    return saved


def _default(name: str) -> Any:
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from a saved dict (config.json, a checkpoint), keys and types checked."""
    _check_keys(values, source)
    return TrainConfig(**{k: _coerce(k, v, source) for k, v in values.items()})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help and default; unset flags stay absent from args."""
    defaults = resolve_config()  # what a run naming no recipe gets
    for f in fields(TrainConfig):
        kind, optional = _field_type(f.name)
        default = "runs/RECIPE" if f.name == "out" else repr(getattr(defaults, f.name))
        by_recipe = ", ".join(f"{name} {values[f.name]!r}" for name, values in RECIPES.items()
                              if f.name in values and values[f.name] != getattr(defaults, f.name))
        by_recipe = f"; recipes: {by_recipe}" if by_recipe else ""
        help_text = f"{f.metadata.get('help', '')} (default: {default}{by_recipe})"
        help_text = help_text.replace("%", "%%")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **common)
        elif f.name in CHOICES:  # the choices listed in the help, so that the usage fits 80 columns
            common["help"] = f"one of {', '.join(CHOICES[f.name])}: {help_text}"
            parser.add_argument(_flag(f.name), choices=CHOICES[f.name], metavar=f.name.upper(), **common)
        elif f.name == "recipe":
            parser.add_argument(_flag(f.name), choices=list(RECIPES), **common)
        else:
            metavar = {int: "N", float: "X", dict: "K=V,..", tuple: "B1,B2"}.get(kind, f.name.upper())
            parser.add_argument(_flag(f.name), metavar=metavar, **common)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (only those), typed."""
    given = {name: getattr(args, name) for name in FIELD_NAMES if hasattr(args, name)}
    return {name: _coerce(name, value, f"flag {_flag(name)}") for name, value in given.items()}


def format_config(config: TrainConfig, requested: TrainConfig | None = None, full: bool = False) -> str:
    """The settings, one per line with where each came from: by default only those that differ from the
    defaults; ``full`` lists every one. ``requested`` is the config before the device's auto speed
    settings were decided (their source then reads "auto")."""
    sources = getattr(requested if requested is not None else config, "sources", None) or {}
    before = (requested or config).to_dict()
    rows = []
    for name, value in config.to_dict().items():
        if value != before.get(name):
            source = "auto: this machine"
        elif name in sources:
            source = sources[name]
        elif name == "out" and value == default_out(config.recipe, config.model):
            source = "runs/RECIPE" if config.recipe else "runs/MODEL"
        elif _same(value, _default(name)):
            source = "default"
        elif config.recipe in RECIPES and _same(value, RECIPES[config.recipe].get(name, dataclasses.MISSING)):
            source = f"recipe {config.recipe}"
        else:
            source = "set"
        if full or not (_same(value, _default(name)) or name == "recipe"):
            rows.append((name, json.dumps(value), source))
    if not rows:
        return "  (all defaults)"
    from ..text_tables import terminal_width

    name_width = max(len(r[0]) for r in rows)
    value_width = min(max(len(r[1]) for r in rows), 24)
    lines = []
    for name, value, source in rows:
        line = f"  {name:<{name_width}}  {value:<{value_width}}  {source}"
        if len(line) > terminal_width():  # a long value (a path): its source goes on a line of its own
            line = f"  {name:<{name_width}}  {value}\n  {'':<{name_width}}  ({source})"
        lines.append(line)
    return "\n".join(lines)


def _same(value: Any, default: Any) -> bool:
    return value == (list(default) if isinstance(default, tuple) else default)
