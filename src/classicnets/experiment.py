"""``classicnets.train(config)``: wires a model from the zoo, a dataset's loaders and the training loop.

    >>> history = classicnets.train(recipe="quick", out="runs/quick")
    >>> history[-1]["test_acc"]
    0.87...

This module, experiments/ and the CLI are the only places that join models, data and training
(docs/architecture.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import model_metadata
from .errors import ConfigError
from .evaluation import EvalViews
from .models.base import init_xavier
from .training.config import (
    DEFAULT_RECIPE,
    TrainConfig,
    config_from_dict,
    format_config,
    load_config_file,
    resolve_config,
)
from .training.distributed import (
    DistContext,
    init_distributed,
    lost_rank_errors,
    restart_count,
    shutdown_distributed,
)
from .training.logging import require_tensorboard
from .training.loop import StopSignals, Trainer, seed_everything
from .training.speed import resolve_speed
from .weights import WeightsFile, head_parameter_names, load_weights, read_weights


def train(config: TrainConfig | Mapping[str, Any] | str | Path | None = None, **overrides) -> list[dict]:
    """Train as ``config`` says and return the history: one dict per epoch (losses, accuracies, speed).

    ``config`` is a :class:`TrainConfig`, a mapping of its fields (``recipe`` included), or a YAML/TOML
    file; keyword arguments override it, e.g. ``train(recipe="quick", epochs=2, out="runs/try")``.
    Raises :class:`~classicnets.training.loop.TrainingInterrupted` after saving when Ctrl-C or SIGTERM
    stops the run, and :class:`~classicnets.training.loop.NonFiniteLossError` when the loss diverges.
    On the CPU the run keeps freed host memory for the next step and releases it at the end: the
    host-memory policy of :mod:`classicnets.runtime`.
    """
    config = resumed_after_restart(as_config(config, overrides))
    ctx = init_distributed(config.device)
    try:
        with lost_rank_errors(ctx):
            return run(config, ctx)
    finally:
        shutdown_distributed(ctx)


def resumed_after_restart(config: TrainConfig) -> TrainConfig:
    """``config`` with ``resume`` on when torchrun (--max-restarts) started the processes again after one
    failed: the restarted run continues from last/ instead of refusing its own folder."""
    if restart_count() > 0 and not config.resume:
        return config_from_dict({**config.to_dict(), "resume": True}, "settings")
    return config


def as_config(config: TrainConfig | Mapping[str, Any] | str | Path | None,
              overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from any of the forms :func:`train` accepts, with ``overrides`` applied."""
    overrides = dict(overrides or {})
    if isinstance(config, TrainConfig):
        if not overrides:
            return config
        return config_from_dict({**config.to_dict(), **overrides}, "settings")
    if isinstance(config, (str, Path)):
        return resolve_config(None, load_config_file(config), overrides)
    return resolve_config(None, None, {**dict(config or {}), **overrides})


def run(config: TrainConfig, ctx: DistContext, stop: StopSignals | None = None) -> list[dict]:
    """Build the loaders and the model for ``config`` and train on ``ctx``'s device."""
    from . import registry
    from .data import build_loaders

    requested, config = config, resolve_speed(config, ctx.device)
    if config.log_to == "tensorboard":
        require_tensorboard()
    info = registry.model_info(config.model)
    image_size = config.image_size or info.default_input[-1]
    _check_image_size(config, image_size)  # before any data is read, and before a run is replaced
    start = _starting_weights(config, ctx)
    loaders = build_loaders(
        config.dataset, data_dir=config.data_dir, image_size=image_size,
        batch_size=_per_process_batch(config, ctx), eval_batch_size=_eval_batch(config, ctx),
        augment=config.augment, normalize=config.normalize, device=ctx.device,
        channels_last=config.channels_last, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size,
        subset=config.subset, test_subset=config.test_subset, num_workers=config.num_workers,
        on_bad=config.on_bad, max_pixels=config.max_pixels,
        stats=_weights_stats(start, info) if start is not None and config.normalize else None,
    )
    seed_everything(config.seed)  # the same initial weights for the same seed, on every rank
    model = registry.create_model(config.model, num_classes=loaders.num_classes,
                                  in_channels=loaders.in_channels, **config.model_options)
    if config.init == "xavier":
        init_xavier(model)
    if start is not None:
        report = load_weights(model, start, name=config.model, options=config.model_options)
        if ctx.is_main:
            print(report)
    head = None
    if config.freeze_epochs or config.backbone_lr_mult != 1:
        head = head_parameter_names(config.model, config.model_options, num_classes=loaders.num_classes,
                                    in_channels=loaders.in_channels)
    metadata = model_metadata(
        model=config.model, model_options=config.model_options, num_classes=loaders.num_classes,
        in_channels=loaders.in_channels, classes=list(loaders.classes), image_size=image_size,
        mean=loaders.mean if config.normalize else None, std=loaders.std if config.normalize else None,
        dataset=loaders.dataset,
    )
    if ctx.is_main:
        _print_start(config, requested, model, ctx, image_size, loaders)
    # the paper's 10-crop test cuts its crops out of larger views (256 for 224 crops)
    test_loader = loaders.test_uncropped if config.tta == "ten-crop" else loaders.test
    trainer = Trainer(model, loaders.train, test_loader, config, ctx=ctx, metadata=metadata,
                      views=EvalViews(config.tta, image_size), stop=stop, head=head)
    return trainer.fit()


def _starting_weights(config: TrainConfig, ctx: DistContext) -> WeightsFile | None:
    """The --weights file, read (so that a bad one fails before the data loads); None without one, and when
    resuming a run, which continues from its own checkpoint."""
    from .checkpoint import LAST

    if config.weights is None:
        if config.recipe == "finetune" and ctx.is_main:
            print("note: the finetune recipe without --weights trains from random weights; pass --weights "
                  "with a pretrained file (e.g. torchvision's resnet18 state_dict)")
        return None
    if config.resume and (Path(config.out) / LAST).exists():
        return None
    return read_weights(config.weights)


def _weights_stats(start: WeightsFile, info) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the weights were trained with: a run's own, else the model's (ImageNet's)."""
    meta = start.metadata or {}
    if meta.get("mean") is not None and meta.get("std") is not None:
        return tuple(meta["mean"]), tuple(meta["std"])
    return tuple(info.mean), tuple(info.std)


def _check_image_size(config: TrainConfig, size: int) -> None:
    """Refuse an image size outside the model's range (its ``input_sizes``: a fixed-size head has a
    largest size too), from the model built on the meta device: no memory, no weights initialised."""
    from . import registry

    info = registry.model_info(config.model)
    with torch.device("meta"):
        model = registry.create_model(config.model, num_classes=2, in_channels=info.default_input[0],
                                      **config.model_options)
    lo, hi = getattr(model, "input_sizes", (info.min_input[-1], None))
    if size < lo or (hi is not None and size > hi):
        sizes = f"at least {lo} px" if hi is None else f"{lo} to {hi} px"
        raise ConfigError(f"image_size {size} does not fit {config.model}, which takes {sizes}; pass an "
                          f"--image-size in that range (or leave it unset for the model's default, "
                          f"{info.default_input[-1]})")


def _per_process_batch(config: TrainConfig, ctx: DistContext) -> int:
    """Micro-batch of one process: the global batch split over processes and accumulation steps."""
    parts = ctx.world_size * config.grad_accum_steps
    if config.batch_size % parts:
        raise ConfigError(f"batch_size {config.batch_size} cannot be split evenly over {ctx.world_size} "
                          f"process(es) x {config.grad_accum_steps} accumulation step(s); pass a multiple "
                          f"of {parts}")
    return config.batch_size // parts


def _eval_batch(config: TrainConfig, ctx: DistContext) -> int:
    # no activations are kept for backward, so evaluation affords twice the batch
    total = config.eval_batch_size or 2 * config.batch_size
    return max(1, total // ctx.world_size)


def _print_start(config: TrainConfig, requested: TrainConfig, model: nn.Module, ctx: DistContext,
                 image_size: int, loaders) -> None:
    params = sum(p.numel() for p in model.parameters())
    options = json.dumps(config.model_options) if config.model_options else ""
    where = ctx.device if not ctx.distributed else f"{ctx.world_size} x {ctx.device.type} ({ctx.backend})"
    recipe = f" (recipe {config.recipe})" if config.recipe else ""
    print(f"settings{recipe} that differ from the defaults:\n{format_config(config, requested)}")
    if config.recipe == DEFAULT_RECIPE:
        print("recipe default (no --recipe named): SGD with momentum 0.9 on normalised inputs, which "
              "learns on new data; --recipe d2l for the book's exact settings, --recipe quick for a "
              "2-minute CPU run")
    print(f"training {config.model}{' ' + options if options else ''}: {params:,} parameters on {where}\n"
          f"  data {config.dataset}: {len(loaders.train)} batches/epoch, {image_size}x{image_size}, "
          f"{len(loaders.classes)} classes; torch {torch.__version__}")
