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
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint as ckpt
from ..errors import ClassicnetsError, ConfigError
from ..evaluation import NO_TTA, EvalViews, RunningSums, evaluate_batches, to_device
from ..inference.plots import plot_curves
from ..runtime import autocast, reused_host_memory
from .config import TrainConfig
from .distributed import DistContext, all_reduce_, barrier, wrap_model
from .logging import epoch_line, write_logs
from .rundir import PartialEpoch, ResumePoint, prepare_run_dir
from .speed import resolve_speed


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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach kernels update all parameters in a few launches instead of one per tensor
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay, foreach=True)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    # the fused kernel (CPU and CUDA) does the whole Adam update in one pass over each tensor
    return cls(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
               fused=True)


class Schedule:
    """The learning-rate schedule: per-step schedulers step after each optimizer step, plateau per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> None:
        self.per_epoch = config.schedule == "plateau"
        total = max(1, steps_per_epoch * config.epochs)
        sched = torch.optim.lr_scheduler
        if config.schedule == "onecycle":
            # momentum stays as configured (cycle_momentum off) so the recipe's momentum means what it says
            self.scheduler = sched.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                              pct_start=config.onecycle_pct, cycle_momentum=False)
        elif config.schedule == "plateau":
            # "divided by 10 at most three times": the floor is the lr after the last allowed drop
            floor = config.lr * config.gamma ** config.plateau_max_drops * (1 - 1e-6)
            self.scheduler = sched.ReduceLROnPlateau(optimizer, mode="max", factor=config.gamma,
                                                     patience=config.plateau_patience, min_lr=floor)
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
    test-time augmentation of the per-epoch test (:class:`~classicnets.evaluation.EvalViews`). Only rank 0
    prints, plots and writes files.
    """

    def __init__(self, model: nn.Module, train_loader, test_loader, config: TrainConfig, *,
                 ctx: DistContext, metadata: dict[str, str], views: EvalViews = NO_TTA,
                 print_fn: Callable[[str], None] = print, stop: StopSignals | None = None) -> None:
        config = resolve_speed(config, ctx.device)  # auto precision, channels_last, compile
        self.config, self.ctx, self.metadata, self.views = config, ctx, metadata, views
        self.stop = stop  # installed by the caller to cover its setup too; else fit installs its own
        self.train_loader, self.test_loader = train_loader, test_loader
        self.device = ctx.device
        self.run_dir = Path(config.out)
        self.print = print_fn if ctx.is_main else (lambda *_: None)
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)  # the plain model: saved, loaded
        self.optimizer = build_optimizer(self.model, config)
        self.steps_per_epoch = math.ceil(len(train_loader) / config.grad_accum_steps)
        self.schedule = Schedule(self.optimizer, config, self.steps_per_epoch)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, 0
        self.start_epoch = 0
        self.partial = PartialEpoch()  # of the epoch a resumed run starts in
        self.images_before = 0  # images of the current epoch trained before a resume
        # the model as trained (DDP, torch.compile) and as evaluated; wrapped once the weights are loaded
        self.ddp_model = self.train_model = self.eval_model = self.model
        self.saver = ckpt.BackgroundSaver()

    # ----------------------------------------------------------------------------------- public

    def fit(self) -> list[dict[str, Any]]:
        """Train for the configured epochs (continuing a checkpoint with ``resume``); return the history."""
        point = prepare_run_dir(self.run_dir, self.config, self.ctx, self.metadata, self.print)
        if point is not None:
            self._resume(point)
        self._wrap_model()
        stop_signals = contextlib.nullcontext(self.stop) if self.stop else StopSignals()
        try:
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
            raise
        barrier(self.ctx)
        return self.history

    def _resume(self, point: ResumePoint) -> None:
        ckpt.load_into_model(self.model, point.weights, point.source)
        self.optimizer.load_state_dict(point.optimizer)
        self.schedule.load_state_dict(point.scheduler)
        self.history, self.best_acc, self.best_epoch = point.history, point.best_acc, point.best_epoch
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
        record = {
            "epoch": epoch + 1, "train_loss": values["loss"], "train_acc": values["top1"],
            "test_loss": test["loss"], "test_acc": test["acc"], "test_top5": test["top5"],
            "lr": self.optimizer.param_groups[0]["lr"],
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
        self._save(epoch + 1, 0, None, is_best=is_best, then=self._curves_job())
        return record

    def _train_epoch(self, epoch: int, stop: StopSignals) -> tuple[RunningSums, int | None]:
        """One pass; returns the sums and, if a signal stopped it, the step it stopped after."""
        config, loader = self.config, self.train_loader
        self.train_model.train()
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
        if not (self.config.progress and self.ctx.is_main and _is_terminal()):
            def check_only(done: int, sums: RunningSums) -> None:
                if done % every == 0:
                    self._check_finite_sums(sums, epoch, done)

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
                    self._check_finite_sums(sums, epoch, done)
                    values = sums.values()
                    stats = f"loss {values['loss']:.4f}  acc {values['top1']:.3f}"
                bar.update(task, completed=done, **({"stats": stats} if stats else {}))

            yield advance

    # ------------------------------------------------------------------------------- safety, saving

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
        }
        if partial is not None:
            state["partial"] = partial
        # written on a thread while the next epoch trains (fit waits for it before it returns or raises)
        self.saver.save(self.run_dir, model_state=self.model.state_dict(), metadata=self.metadata,
                        trainer_state=state, is_best=is_best, then=then)

    def _report(self, record: dict[str, Any]) -> None:
        """The epoch's line and logs (curves.png is drawn by :meth:`_curves_job` on the save thread)."""
        if not self.ctx.is_main:
            return
        self.print(epoch_line(record))
        write_logs(self.run_dir, self.history)

    def _curves_job(self) -> Callable[[], Any]:
        # matplotlib takes ~0.2 s a plot, as long as a GPU epoch of the d2l recipe: drawn off the hot path
        history = list(self.history)
        title = f"{self.metadata.get('model', '')} on {self.metadata.get('dataset', '')}"
        return lambda: plot_curves(self.run_dir, history, title=title)


def micro_batches_in_step(step: int, total: int, accum: int) -> int:
    """How many micro-batches the optimizer step holding micro-batch ``step`` (of ``total``) sums: ``accum``,
    except the epoch's last step, which may hold fewer (its loss still averages over its own images)."""
    return min(accum, total - step // accum * accum)


def _is_terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal  # no live bar in logs and pipes: only the epoch lines

