"""The training loop for any ``nn.Module``: optimizer, schedule, steps, evaluation, checkpoints, resume.

The hot loop never waits for the device: loss and hits accumulate as device tensors (evaluation.RunningSums)
and are read only every ``log_every`` steps and at the end of an epoch. The same reads check that the loss
is finite, so a diverging run stops within ``log_every`` steps and never saves a non-finite state.

Exact resume: each epoch seeds every generator from (seed, epoch, rank) and the loader's ``set_epoch``
fixes the data order, so a run resumed at an epoch boundary retraces the uninterrupted one bit for bit
(in deterministic mode). A run stopped mid-epoch (Ctrl-C, SIGTERM) also saves every rank's RNG states and
partial sums, and on resume replays the epoch's data order up to the step where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint as ckpt
from ..errors import ClassicnetsError, ConfigError, DatasetError
from ..evaluation import NO_TTA, EvalViews, RunningSums, evaluate_batches, to_device
from ..inference.plots import plot_curves
from ..runtime import autocast, reused_host_memory
from .config import TrainConfig
from .distributed import DistContext, all_reduce_, barrier, wrap_model
from .logging import TensorBoardLog, epoch_line, write_logs
from .rundir import REPLACED_RUN, PartialEpoch, ResumePoint, prepare_run_dir, settle_replaced_run
from .speed import left_to_auto

# Without a terminal (logs, CI, nohup, notebooks) a progress line is printed at most this often.
PROGRESS_LINE_SECONDS = 30.0


class NonFiniteLossError(ClassicnetsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after the current step; a checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        where = f"; saved {checkpoint}, continue with --resume" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}")


# ---------------------------------------------------------------------------------- setup helpers


def seed_everything(*entropy: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random from the given integers, mixed by numpy's SeedSequence."""
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


NO_DETERMINISTIC_KERNEL = "does not have a deterministic implementation"


def _no_deterministic_kernel(message: str, device: torch.device) -> str:
    # torch names the kernel first, e.g. "adaptive_avg_pool2d_backward_cuda does not have a deterministic ..."
    # (names may hold spaces, "median CUDA with indices output"; torch.compile prefixes its own text)
    found = re.search(r"(?:^|[:\n])\s*([^:\n]+?) " + NO_DETERMINISTIC_KERNEL, message)
    kernel = found.group(1) if found else "a kernel this model needs"
    return (f"--deterministic: {kernel} has no deterministic implementation on {device.type} in torch "
            f"{torch.__version__} (on CUDA: adaptive average pooling, used by vgg* and alexnet_owt, and "
            "others); train this model without --deterministic (runs then differ in the last bits), or on "
            "the CPU")


@contextlib.contextmanager
def torch_settings(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Global switches for the run (deterministic algorithms, TF32 on CUDA, host memory kept for reuse on
    the CPU), restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision(),
             torch.backends.cudnn.benchmark, torch.get_num_threads())
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 on Ampere+: ~fp32 accuracy, several times faster
        torch.backends.cudnn.benchmark = not config.deterministic
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    try:
        with reused_host_memory(enabled=device.type == "cpu"):
            yield
    except RuntimeError as error:
        if config.deterministic and NO_DETERMINISTIC_KERNEL in str(error):
            raise ConfigError(_no_deterministic_kernel(str(error), device)) from None
        raise
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.set_num_threads(saved[3])


def build_optimizer(model: nn.Module, config: TrainConfig,
                    head: Collection[str] | None = None) -> torch.optim.Optimizer:
    """The optimizer; with ``backbone_lr_mult`` != 1, two parameter groups: the head's at ``lr`` (first, so
    ``param_groups[0]`` keeps meaning the configured lr) and the backbone's at ``lr * backbone_lr_mult``."""
    params: list[Any] = [p for p in model.parameters() if p.requires_grad]
    if config.backbone_lr_mult != 1:
        head_params, backbone = split_head(model, _require_head(head, "backbone_lr_mult"))
        params = [{"params": head_params, "lr": config.lr},
                  {"params": backbone, "lr": config.lr * config.backbone_lr_mult}]
    # foreach kernels update all parameters in a few launches instead of one per tensor
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, foreach=True)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    # the fused kernel (CPU and CUDA) does the whole Adam update in one pass over each tensor
    return cls(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
               fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, each state tensor then laid out in memory as its parameter is.

    A checkpoint stores tensors contiguous, and ``load_state_dict`` restores their dtype and device but
    not their strides. The fused Adam/AdamW kernels walk a weight and its moments as flat buffers, so a
    channels_last weight would be updated with the moments of other elements (a resumed run drifting
    from the uninterrupted one); the foreach SGD kernels stay correct but leave their fast path.
    """
    optimizer.load_state_dict(state)
    for parameter, values in optimizer.state.items():
        for name, value in values.items():
            if (isinstance(value, torch.Tensor) and value.shape == parameter.shape
                    and value.stride() != parameter.stride()):
                values[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def split_head(model: nn.Module, head: Collection[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head parameters, backbone parameters) of ``model``, ``head`` naming the head's parameters."""
    named = dict(model.named_parameters())
    unknown = sorted(set(head) - named.keys())
    if unknown:
        raise ConfigError(f"the head names parameters the model does not have: {unknown[:5]}")
    return ([p for n, p in named.items() if n in head], [p for n, p in named.items() if n not in head])


def _require_head(head: Collection[str] | None, setting: str) -> Collection[str]:
    if not head:
        raise ConfigError(f"{setting} needs to know which parameters are the model's head; train a zoo "
                          "model (classicnets.train does it) or pass head=[parameter names] to the Trainer")
    return head


class Schedule:
    """The learning-rate schedule: per-step schedulers step after each optimizer step, plateau per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> None:
        self.per_epoch = config.schedule == "plateau"
        total = max(1, steps_per_epoch * config.epochs)
        sched = torch.optim.lr_scheduler
        peaks = [group["lr"] for group in optimizer.param_groups]  # the head's and the backbone's
        if config.schedule == "onecycle":
            # momentum stays as configured (no cycling) so the recipe's momentum means what it says
            self.scheduler = OneCycle(optimizer, max_lr=peaks, total_steps=total,
                                      pct_start=config.onecycle_pct)
        elif config.schedule == "plateau":
            # "divided by 10 at most three times": the floor is the lr after the last allowed drop
            floors = [peak * config.gamma ** config.plateau_max_drops * (1 - 1e-6) for peak in peaks]
            self.scheduler = sched.ReduceLROnPlateau(optimizer, mode="max", factor=config.gamma,
                                                     patience=config.plateau_patience, min_lr=floors)
        else:
            self.scheduler = sched.LambdaLR(optimizer, _lr_factor(config, steps_per_epoch, total))

    def step_batch(self) -> None:
        if not self.per_epoch:
            self.scheduler.step()

    def step_epoch(self, test_acc: float) -> None:
        if self.per_epoch:
            self.scheduler.step(test_acc)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class OneCycle(torch.optim.lr_scheduler.LRScheduler):
    """torch's OneCycleLR (cosine annealing, its default divisors, momentum left alone), bit for bit the same
    lrs, for any number of steps. OneCycleLR puts the peak at step ``pct_start * total - 1`` and divides by
    that when it is 0 (ZeroDivisionError at 4 steps with pct_start 0.25), and a run shorter still trains all
    its steps at the final lr, 1e-4 of the start's. Here a peak before the first step is the first step."""

    DIV, FINAL_DIV = 25.0, 1e4  # OneCycleLR's div_factor and final_div_factor

    def __init__(self, optimizer: torch.optim.Optimizer, *, max_lr: float | list[float], total_steps: int,
                 pct_start: float) -> None:
        groups = len(optimizer.param_groups)
        self.max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * groups
        self.peak, self.last = max(0.0, float(pct_start * total_steps) - 1), total_steps - 1
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, peak) for peak in self.max_lrs]

    def lr_at(self, step: int, max_lr: float) -> float:
        """The lr at ``step`` of a group whose peak lr is ``max_lr``."""
        initial_lr = max_lr / self.DIV
        min_lr = initial_lr / self.FINAL_DIV
        if step <= self.peak:  # rising (a peak at step 0 has no rise)
            return max_lr if not self.peak else _annealing_cos(initial_lr, max_lr, step / self.peak)
        # past the peak; last == peak == 0 only in a one-step run, after its step
        span = self.last - self.peak
        return _annealing_cos(max_lr, min_lr, min(1.0, (step - self.peak) / span) if span else 1.0)


def _annealing_cos(start: float, end: float, pct: float) -> float:
    """From ``start`` at pct 0 to ``end`` at 1 along half a cosine (OneCycleLR's, the same expression)."""
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def _lr_factor(config: TrainConfig, steps_per_epoch: int, total: int) -> Callable[[int], float]:
    """Multiplier of the lr at optimizer step ``step``: warm-up, then constant, step or cosine."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    every = config.step_epochs * steps_per_epoch
    floor = config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        if config.schedule == "step":
            return config.gamma ** (step // every)
        if config.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


class StopSignals:
    """Ctrl-C / SIGTERM set a flag that the loop reads after each step; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum


# ------------------------------------------------------------------------------------- evaluation


def evaluate(model: nn.Module, loader, *, device: torch.device, precision: str = "fp32",
             channels_last: bool = False, views: EvalViews = NO_TTA,
             ctx: DistContext | None = None) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy over ``loader`` (summed over all ranks): the evaluation of
    :mod:`classicnets.evaluation`, as ``classicnets eval`` runs it."""
    sums = evaluate_batches(model, loader, device=device, views=views, bf16=precision == "bf16",
                            channels_last=channels_last)
    if ctx is not None:
        all_reduce_(sums.sums, ctx)
    values = sums.values()
    return {"loss": values["loss"], "acc": values["top1"], "top5": values["top5"], "count": values["count"]}


# ---------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains ``model`` on ``train_loader`` and evaluates on ``test_loader`` after every epoch.

    ``metadata`` is the header for ``model.safetensors`` (checkpoint.model_metadata); ``views`` is the
    test-time augmentation of the per-epoch test (:class:`~classicnets.evaluation.EvalViews`). ``head`` names
    the head's parameters, which fine-tuning (``freeze_epochs``, ``backbone_lr_mult``) treats apart from the
    backbone. Only rank 0 prints, plots and writes files.
    """

    def __init__(self, model: nn.Module, train_loader, test_loader, config: TrainConfig, *,
                 ctx: DistContext, metadata: dict[str, str], views: EvalViews = NO_TTA,
                 print_fn: Callable[[str], None] = print, stop: StopSignals | None = None,
                 head: Collection[str] | None = None) -> None:
        if auto := left_to_auto(config):  # decided once, before the loaders (which need channels_last)
            raise ValueError(f"the Trainer needs decided speed settings, found {', '.join(auto)} left to "
                             "auto: pass the config through training.speed.resolve_speed(config, device) "
                             "first, as classicnets.train does")  # fmt: skip
        self.config, self.ctx, self.metadata, self.views = config, ctx, metadata, views
        self.stop = stop  # installed by the caller to cover its setup too; else fit installs its own
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device = ctx.device
        self.run_dir = Path(config.out)
        self.print = print_fn if ctx.is_main else (lambda *_: None)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)  # the plain model: saved, loaded
        self.head = frozenset(head or ())
        if config.freeze_epochs:
            _require_head(self.head, "freeze_epochs")
        self.frozen = False  # the backbone, while freeze_epochs lasts
        self.optimizer = build_optimizer(self.model, config, self.head)
        if len(train_loader) == 0:  # an epoch would train nothing and still report success
            raise ConfigError("the training data yields no batch; the data set is empty or smaller than "
                              "one batch: add images or lower --batch-size")
        self.steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum_steps)
        self.schedule = Schedule(self.optimizer, config, self.steps_per_epoch)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.history: list[dict[str, Any]] = []
        # (epoch as a fraction, mean training loss since the previous point, lr), every log_every steps
        self.step_losses: list[tuple[float, float, float]] = []
        self._last_sums: tuple[float, float] = (0.0, 0.0)
        self.best_acc, self.best_epoch = -1.0, 0
        self.start_epoch = 0
        self.partial = PartialEpoch()  # of the epoch a resumed run starts in
        self.images_before = 0  # images of the current epoch trained before a resume
        # the model as trained (DDP, torch.compile) and as evaluated; wrapped once the weights are loaded
        self.ddp_model = self.train_model = self.eval_model = self.model
        self.saver = ckpt.BackgroundSaver()
        self.board: TensorBoardLog | None = None  # opened by fit with log_to="tensorboard"

    # ----------------------------------------------------------------------------------- public

    def fit(self) -> list[dict[str, Any]]:
        """Train for the configured epochs (continuing a checkpoint with ``resume``); return the history."""
        point = prepare_run_dir(self.run_dir, self.config, self.ctx, self.metadata, self.print)
        if point is not None:
            self._resume(point)
        self._freeze_backbone(self._frozen_in(self.start_epoch))  # before DDP, which keeps trainable ones
        if self.config.log_to == "tensorboard" and self.ctx.is_main:
            resumed_at = self.start_epoch * len(self.train_loader) + self.partial.step
            self.board = TensorBoardLog.open(self.run_dir, resumed_at)
        stop_signals = contextlib.nullcontext(self.stop) if self.stop else StopSignals()
        try:
            self._wrap_model()
            with torch_settings(self.config, self.device), stop_signals as stop:
                if stop.signum is not None:  # stopped while setting up: nothing trained, nothing to save
                    raise TrainingInterrupted(stop.signum, None)
                for epoch in range(self.start_epoch, self.config.epochs):
                    record = self._run_epoch(epoch, stop)
                    if record is None or (stop.signum is not None and epoch + 1 < self.config.epochs):
                        self.saver.wait()  # stopped mid-epoch or after it: the checkpoint is on disk
                        barrier(self.ctx)
                        raise TrainingInterrupted(stop.signum, self.run_dir / ckpt.LAST)
            self.saver.wait()
        except BaseException:
            self.saver.wait(raise_error=False)  # the save in flight still lands; the first error is raised
            if self.ctx.is_main:
                settle_replaced_run(self.run_dir)  # no checkpoint landed: the overwritten run comes back
            raise
        finally:
            if self.board is not None:
                self.board.close()
        barrier(self.ctx)
        return self.history

    # ------------------------------------------------------------------------------------ fine-tuning

    def _frozen_in(self, epoch: int) -> bool:
        return self.config.freeze_epochs == -1 or epoch < self.config.freeze_epochs

    def _freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) the backbone's training: no gradients (backward stops at the head), so the
        optimizer skips it; its BatchNorm layers are put in eval mode each epoch (:meth:`_freeze_bn`)."""
        if frozen == self.frozen:
            return
        for name, p in self.model.named_parameters():
            if name not in self.head:
                p.requires_grad_(not frozen)
        self.frozen = frozen
        if frozen and self.ctx.is_main:
            until = "for the whole run" if self.config.freeze_epochs == -1 else (
                f"for epochs 1-{self.config.freeze_epochs}")
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self.print(f"backbone frozen {until}: training the head's {trainable:,} parameters")

    def _freeze_bn(self) -> None:
        # a frozen backbone keeps its pretrained BatchNorm statistics: no running-average updates
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    f"{name}.{p}" in self.head for p, _ in module.named_parameters()):
                module.eval()

    # ------------------------------------------------------------------------------------- resuming

    def _resume(self, point: ResumePoint) -> None:
        ckpt.load_into_model(self.model, point.weights, point.source)
        load_optimizer_state(self.optimizer, point.optimizer)
        self.schedule.load_state_dict(point.scheduler)
        self.history, self.best_acc, self.best_epoch = point.history, point.best_acc, point.best_epoch
        self.step_losses = point.step_losses
        self.start_epoch, self.partial = point.epoch, point.partial
        self.print(f"resuming {point.source} at epoch {self.start_epoch + 1}"
                   + (f", step {point.partial.step}" if point.partial.step else ""))

    def _wrap_model(self) -> None:
        self.ddp_model = self.train_model = wrap_model(self.model, self.ctx, self.config.sync_batchnorm)
        self.eval_model = self.model
        if self.config.compile:
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model) if self.ctx.distributed else self.train_model

    # -------------------------------------------------------------------------------------- epochs

    def _run_epoch(self, epoch: int, stop: StopSignals) -> dict[str, Any] | None:
        start = time.perf_counter()
        train, stopped_at = self._train_epoch(epoch, stop)
        if stopped_at is not None:
            self._save(epoch, stopped_at, train)
            return None
        values = train.values()  # the epoch's first host read: it waits for the steps still queued on a GPU
        train_time = time.perf_counter() - start
        self._check_finite(values["loss"], epoch, self.steps_per_epoch)
        eval_start = time.perf_counter()
        test = evaluate(self.eval_model, self.test_loader, device=self.device,
                        precision=self.config.precision, channels_last=self.config.channels_last,
                        views=self.views, ctx=self.ctx)
        if not test["count"]:  # every test image failed to decode: an accuracy of 0 would mean nothing
            raise DatasetError("no test image could be evaluated (each was skipped as unreadable); fix the "
                               "test images, or check the warnings above for the files")
        record = {
            "epoch": epoch + 1, "train_loss": values["loss"], "train_acc": values["top1"],
            "test_loss": test["loss"], "test_acc": test["acc"],
            # top-5 of five classes or fewer is always 1: no information, left out (None)
            "test_top5": test["top5"] if self._num_classes() > 5 else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            **({"lr_backbone": self.optimizer.param_groups[1]["lr"]} if len(self.optimizer.param_groups) > 1
               else {}),
            "images_per_sec": (values["count"] - self.images_before) / max(train_time, 1e-9),
            "train_time": train_time, "eval_time": time.perf_counter() - eval_start,
            "time": time.perf_counter() - start,
        }
        self.schedule.step_epoch(test["acc"])
        self.history.append(record)
        is_best = test["acc"] > self.best_acc
        if is_best:
            self.best_acc, self.best_epoch = test["acc"], epoch + 1
        self._report(record)
        if self.board is not None:
            self.board.epoch(record, self.model)
        self._save(epoch + 1, 0, None, is_best=is_best, then=self._curves_job())
        return record

    def _train_epoch(self, epoch: int, stop: StopSignals) -> tuple[RunningSums, int | None]:
        """One pass; returns the sums and, if a signal stopped it, the step it stopped after."""
        config, loader = self.config, self.train_loader
        if self._frozen_in(epoch) != self.frozen:
            self._freeze_backbone(self._frozen_in(epoch))
            if self.ctx.distributed:
                self._wrap_model()  # DDP reduces the gradients of the parameters trainable when it was built
        self.train_model.train()
        if self.frozen:
            self._freeze_bn()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        seed_everything(config.seed, epoch, self.ctx.rank)
        sums = RunningSums(self.device, ks=(1,))
        resumed = epoch == self.start_epoch
        skip, self.images_before = self.partial.restore(sums, self.ctx) if resumed else (0, 0)
        total = len(loader)
        with self._progress(epoch, total) as advance:
            for step, (x, y) in enumerate(loader):
                if step < skip:
                    continue  # replaying the data order of an interrupted epoch
                self._train_step(x, y, step, total, sums)
                advance(step + 1, sums)
                if self.saver.failed:  # the last checkpoint did not land: say so now, not an epoch later
                    self.saver.wait()
                if self._should_stop(stop, step, total):
                    return sums, step + 1
        all_reduce_(sums.sums, self.ctx)
        return sums, None

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, step: int, total: int,
                    sums: RunningSums) -> None:
        config = self.config
        x, y = to_device(x, y, self.device, config.channels_last)
        accum = config.grad_accum_steps
        boundary = (step + 1) % accum == 0 or step + 1 == total
        in_step = micro_batches_in_step(step, total, accum)
        # DDP all-reduces gradients on every backward; skip that for all but the last micro-batch
        skip_sync = self.ctx.distributed and not boundary
        with self.ddp_model.no_sync() if skip_sync else contextlib.nullcontext():
            with autocast(self.device, config.precision == "bf16"):
                logits = self.train_model(x)
                loss = self.loss_fn(logits, y)
            (loss / in_step if in_step > 1 else loss).backward()  # the step's mean over its images
        if boundary:
            if config.grad_clip is not None:
                # computes the norm and scales on the device (no host sync; foreach kernels)
                nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip, foreach=True)
            self.optimizer.step()
            self.schedule.step_batch()
            self.optimizer.zero_grad(set_to_none=True)
        sums.add(loss.float(), logits, y)

    def _should_stop(self, stop: StopSignals, step: int, total: int) -> bool:
        boundary = (step + 1) % self.config.grad_accum_steps == 0
        if not boundary or step + 1 == total:
            return False  # stop only between optimizer steps; at the epoch's end it finishes normally
        if not self.ctx.distributed:
            return stop.signum is not None
        if (step + 1) % self.config.log_every:
            return False
        # every rank must stop after the same step: agree on it every log_every steps
        flag = torch.tensor([0.0 if stop.signum is None else float(stop.signum)], device=self.device)
        signum = int(all_reduce_(flag, self.ctx, op="max").item())  # one host read
        if signum and stop.signum is None:
            stop.signum = signum
        return bool(signum)

    @contextlib.contextmanager
    def _progress(self, epoch: int, total: int) -> Iterator[Callable[[int, RunningSums], None]]:
        """A rich progress bar; ``advance(done, sums)`` moves it every step and reads the device every
        ``log_every`` steps (to show the loss and check it is finite)."""
        every = self.config.log_every
        if self.board is not None:
            self.board.start_epoch(time.perf_counter())
        if not (self.config.progress and self.ctx.is_main and _is_terminal()):
            # Logs, nohup, CI, notebooks: no live bar, so a line every PROGRESS_LINE_SECONDS, read at the
            # log_every cadence right after the finiteness check has synchronised anyway.
            lines = self.config.progress and self.ctx.is_main
            start = last_line = time.perf_counter()

            def check_only(done: int, sums: RunningSums) -> None:
                nonlocal last_line
                if done % every:
                    return
                now = time.perf_counter()
                line_due = lines and now - last_line >= PROGRESS_LINE_SECONDS and done < total
                values = self._log_step(sums, epoch, done, total, want_values=line_due)
                if line_due:
                    last_line = now
                    self.print(progress_line(epoch, self.config.epochs, done, total, values, now - start))

            yield check_only
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[stats]}"))
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task("train", total=total, epoch=f"{epoch + 1}/{self.config.epochs}", stats="")

            def advance(done: int, sums: RunningSums) -> None:
                stats = None
                if done % every == 0:
                    values = self._log_step(sums, epoch, done, total, want_values=True)
                    stats = f"loss {values['loss']:.4f}  acc {values['top1']:.3f}"
                bar.update(task, completed=done, **({"stats": stats} if stats else {}))

            yield advance

    # ------------------------------------------------------------------------------- safety, saving

    def _num_classes(self) -> int:
        return int(self.metadata["num_classes"])  # written by checkpoint.model_metadata as a decimal string

    def _record_step_loss(self, sums: RunningSums, epoch: int, done: int, total: int) -> None:
        """A point of curves.png's per-step loss: the mean since the last point. Called right after the
        finiteness check has waited for the device, so reading two numbers costs no further wait."""
        if not self.ctx.is_main:
            return
        loss_sum, count = sums.sums[:2].tolist()
        last_sum, last_count = self._last_sums if done > self.config.log_every else (0.0, 0.0)
        if count > last_count:
            self.step_losses.append((epoch + done / total, (loss_sum - last_sum) / (count - last_count),
                                     self.optimizer.param_groups[0]["lr"]))
        self._last_sums = (loss_sum, count)

    def _log_step(self, sums: RunningSums, epoch: int, done: int, total: int,
                  want_values: bool) -> dict[str, float] | None:
        """Every ``log_every`` steps: check the loss is finite and, for the progress bar or TensorBoard, read
        the epoch's running values; one device read in a single process (the values show the loss)."""
        want_values = want_values or self.board is not None
        if self.ctx.distributed or not want_values:
            self._check_finite_sums(sums, epoch, done)  # the ranks agree first
            values = sums.values() if want_values else None  # nothing is queued after that read
        else:
            values = sums.values()
            self._check_finite(values["loss"], epoch, done)
        self._record_step_loss(sums, epoch, done, total)  # the device has been waited for: no new wait
        if self.board is not None:
            lrs = [group["lr"] for group in self.optimizer.param_groups]
            self.board.step(epoch * total + done, values, lrs, time.perf_counter())
        return values

    def _check_finite_sums(self, sums: RunningSums, epoch: int, step: int) -> None:
        # Each rank sums its own losses: the ranks agree, so that all of them stop here together instead
        # of one stopping while the others wait for it in the next gradient all-reduce.
        finite = all_reduce_(sums.loss_finite_flag(), self.ctx, op="min")
        if not finite.item():
            self._check_finite(float("nan"), epoch, step)

    def _check_finite(self, loss: float, epoch: int, step: int) -> None:
        if math.isfinite(loss):
            return
        self.saver.wait(raise_error=False)  # the previous epoch's checkpoint may still be landing
        last = self.run_dir / ckpt.LAST
        kept = (f"the last good checkpoint, {last} (epoch {len(self.history)}), is kept"
                if last.exists() else "no checkpoint was written")
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite in epoch {epoch + 1} (by step {step}); {kept}. "
            f"Lower the learning rate (now --lr {self.config.lr:g}), add --grad-clip 1.0 or "
            "--warmup-epochs 1, or check the inputs for NaNs"
        )

    def _parameters_finite(self) -> bool:
        norms = torch.stack([p.detach().float().norm() for p in self.model.parameters()])
        return bool(torch.isfinite(norms).all())

    def _save(self, epoch: int, step_in_epoch: int, partial_sums: RunningSums | None,
              is_best: bool = False, then: Callable[[], Any] | None = None) -> None:
        if not self._parameters_finite():
            self._check_finite(float("nan"), max(epoch - 1, 0), step_in_epoch or self.steps_per_epoch)
        partial = None
        if partial_sums is not None:
            # a mid-epoch stop: every rank's sums and RNG states, for an exact resume on each of them
            partial = PartialEpoch.capture(partial_sums, self.ctx)
        if not self.ctx.is_main:
            return
        state = {
            "epoch": epoch, "step_in_epoch": step_in_epoch, "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "history": self.history, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
            "step_losses": self.step_losses,
        }
        if partial is not None:
            state["partial"] = partial

        def landed() -> None:
            shutil.rmtree(self.run_dir / REPLACED_RUN, ignore_errors=True)  # an overwritten run: now replaced
            if then is not None:
                then()

        # written on a thread while the next epoch trains (fit waits for it before it returns or raises)
        self.saver.save(self.run_dir, model_state=self.model.state_dict(), metadata=self.metadata,
                        trainer_state=state, is_best=is_best, then=landed)

    def _report(self, record: dict[str, Any]) -> None:
        """The epoch's line and logs (curves.png is drawn by :meth:`_curves_job` on the save thread)."""
        if not self.ctx.is_main:
            return
        self.print(epoch_line(record))
        write_logs(self.run_dir, self.history)

    def _curves_job(self) -> Callable[[], Any]:
        # matplotlib takes ~0.2 s a plot, as long as a GPU epoch of the d2l recipe: drawn off the hot path
        history, steps = list(self.history), list(self.step_losses)
        options = self.config.model_options
        model = self.metadata.get("model", "") + (f" {json.dumps(options)}" if options else "")
        recipe = f"recipe {self.config.recipe}: " if self.config.recipe else ""
        title = f"{recipe}{model} on {self.metadata.get('dataset', '')}"
        return lambda: plot_curves(self.run_dir, history, title=title, steps=steps)


def progress_line(epoch: int, epochs: int, done: int, total: int, values: dict[str, float],
                  elapsed: float) -> str:
    """``epoch 1/2: step 100/234, loss 0.5123, train acc 0.812, 2m05s left in the epoch``."""
    left = elapsed / max(done, 1) * (total - done)
    return (f"epoch {epoch + 1}/{epochs}: step {done}/{total}, loss {values['loss']:.4f}, "
            f"train acc {values['top1']:.3f}, {int(left // 60)}m{int(left % 60):02d}s left in the epoch")


def micro_batches_in_step(step: int, total: int, accum: int) -> int:
    """How many micro-batches the optimizer step holding micro-batch ``step`` (of ``total``) sums: ``accum``,
    except the epoch's last step, which may hold fewer (its loss still averages over its own images)."""
    return min(accum, total - step // accum * accum)


def _is_terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal  # no live bar in logs and pipes: only the epoch lines

