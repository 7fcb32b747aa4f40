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
from .training.config import TrainConfig, config_from_dict, format_config, load_config_file, resolve_config
from .training.distributed import (
    DistContext,
    init_distributed,
    lost_rank_errors,
    restart_count,
    shutdown_distributed,
)
from .training.loop import StopSignals, Trainer, seed_everything
from .training.speed import resolve_speed


def train(config: TrainConfig | Mapping[str, Any] | str | Path | None = None, **overrides) -> list[dict]:
    """Train as ``config`` says and return the history: one dict per epoch (losses, accuracies, speed).

    ``config`` is a :class:`TrainConfig`, a mapping of its fields (``recipe`` included), or a YAML/TOML
    file; keyword arguments override it, e.g. ``train(recipe="quick", epochs=2, out="runs/try")``.
    Raises :class:`~classicnets.training.loop.TrainingInterrupted` after saving when Ctrl-C or SIGTERM
    stops the run, and :class:`~classicnets.training.loop.NonFiniteLossError` when the loss diverges.
    On the CPU the run keeps freed host memory for the next step and releases it at the end: the
    host-memory policy of :mod:`classicnets.runtime`.
    """
    config = as_config(config, overrides)
    if restart_count() > 0 and not config.resume:
        # torchrun (--max-restarts) started the processes again after one failed: continue from last/
        config = config_from_dict({**config.to_dict(), "resume": True}, "settings")
    ctx = init_distributed(config.device)
    try:
        with lost_rank_errors(ctx):
            return run(config, ctx)
    finally:
        shutdown_distributed(ctx)


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
    return resolve_config(None, dict(config or {}), overrides)


def run(config: TrainConfig, ctx: DistContext, stop: StopSignals | None = None) -> list[dict]:
    """Build the loaders and the model for ``config`` and train on ``ctx``'s device."""
    from . import registry
    from .data import build_loaders

    config = resolve_speed(config, ctx.device)
    info = registry.model_info(config.model)
    image_size = config.image_size or info.default_input[-1]
    _check_image_size(config.model, image_size, info.min_input[-1])
    loaders = build_loaders(
        config.dataset, data_dir=config.data_dir, image_size=image_size,
        batch_size=_per_process_batch(config, ctx), eval_batch_size=_eval_batch(config, ctx),
        augment=config.augment, normalize=config.normalize, device=ctx.device,
        channels_last=config.channels_last, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size,
        subset=config.subset, num_workers=config.num_workers,
    )
    seed_everything(config.seed)  # the same initial weights for the same seed, on every rank
    model = registry.create_model(config.model, num_classes=loaders.num_classes,
                                  in_channels=loaders.in_channels, **config.model_options)
    if config.init == "xavier":
        init_xavier(model)
    metadata = model_metadata(
        model=config.model, model_options=config.model_options, num_classes=loaders.num_classes,
        in_channels=loaders.in_channels, classes=list(loaders.classes), image_size=image_size,
        mean=loaders.mean if config.normalize else None, std=loaders.std if config.normalize else None,
        dataset=loaders.dataset,
    )
    if ctx.is_main:
        _print_start(config, model, ctx, image_size, loaders)
    # the paper's 10-crop test cuts its crops out of larger views (256 for 224 crops)
    test_loader = loaders.test_uncropped if config.tta == "ten-crop" else loaders.test
    trainer = Trainer(model, loaders.train, test_loader, config, ctx=ctx, metadata=metadata,
                      views=EvalViews(config.tta, image_size), stop=stop)
    return trainer.fit()


def _check_image_size(model: str, size: int, minimum: int) -> None:
    if size < minimum:
        raise ConfigError(f"image_size {size} is too small for {model}, which needs at least {minimum} px; "
                          f"pass --image-size {minimum} or more (or leave it unset for the model's default)")


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


def _print_start(config: TrainConfig, model: nn.Module, ctx: DistContext, image_size: int, loaders) -> None:
    params = sum(p.numel() for p in model.parameters())
    options = json.dumps(config.model_options) if config.model_options else ""
    where = ctx.device if not ctx.distributed else f"{ctx.world_size} x {ctx.device.type} ({ctx.backend})"
    print(f"settings{f' (recipe {config.recipe})' if config.recipe else ''}:\n{format_config(config)}")
    print(f"training {config.model}{options} ({params:,} parameters) on {config.dataset} "
          f"({len(loaders.train)} batches/epoch, {image_size}x{image_size}, {len(loaders.classes)} classes) "
          f"on {where}, torch {torch.__version__}")
