"""A run directory's life: create it (refusing to clobber a run), resume from it, check that a resumed run
keeps the settings it was trained with, and the state of an epoch stopped part-way.

    OUT/config.json     the run's settings (speed settings resolved), rewritten when it starts or resumes
    OUT/last/, best/    checkpoints (classicnets.checkpoint)
    OUT/metrics.*       logs (training.logging), curves.png (inference.plots)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..errors import ConfigError
from ..evaluation import RunningSums
from ..inference.plots import CURVES_PNG
from .config import TrainConfig, config_from_dict
from .distributed import DistContext, all_gather_objects, barrier
from .logging import CONFIG_JSON, METRICS_CSV, METRICS_JSONL, TENSORBOARD_DIR, write_text_atomic

# Settings that may change when a run resumes; any other difference is refused.
RESUMABLE_CHANGES = {"epochs", "progress", "log_every", "num_workers", "out", "resume", "overwrite",
                     "device", "data_dir", "eval_batch_size", "compile", "cpu_threads",
                     # the global batch stays batch_size when a run resumes on another number of processes
                     # with more or fewer accumulation steps per process
                     "grad_accum_steps", "sync_batchnorm",
                     # a resumed run takes its weights from its checkpoint, not from --weights again
                     "weights", "log_to"}

# --overwrite moves the old run's files here; they are deleted when the new run's first checkpoint has
# landed, and put back if the new run stops before that (or is killed: the next start puts them back).
REPLACED_RUN = ".replaced-run"
RUN_FILES = (ckpt.LAST, ckpt.BEST, CONFIG_JSON, METRICS_JSONL, METRICS_CSV, CURVES_PNG, TENSORBOARD_DIR)


def prepare_run_dir(run_dir: Path, config: TrainConfig, ctx: DistContext, metadata: dict[str, str],
                    say: Callable[[str], None]) -> ResumePoint | None:
    """Make ``run_dir`` ready for ``config``: with ``resume``, read the checkpoint there (refused if it is
    another model's or was trained with other settings); without, refuse to replace a run unless
    ``overwrite``, which sets the old run aside until the new one's first checkpoint lands
    (:func:`set_aside_run`). Then create the directory and write its config.json. Returns the resume point,
    if any."""
    if ctx.is_main:
        settle_replaced_run(run_dir)  # an earlier --overwrite run was killed
    barrier(ctx)
    has_run = check_run_dir(config)
    point = None
    if config.resume and has_run:
        point = ResumePoint.load(run_dir, config, metadata)
    elif config.resume:
        say(f"no checkpoint in {run_dir}; starting a new run there")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config.overwrite and not config.resume and has_run:
            set_aside_run(run_dir)
        write_text_atomic(run_dir / CONFIG_JSON, json.dumps(config.to_dict(), indent=1) + "\n")
    barrier(ctx)
    return point


@dataclass
class ResumePoint:
    """Where a run goes on from: the state saved in ``last/``, checked against the run that resumes it."""

    weights: dict[str, torch.Tensor]
    source: Path
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, Any]]
    best_acc: float
    best_epoch: int
    epoch: int
    partial: PartialEpoch
    # (epoch as a fraction, mean training loss, lr) every log_every steps: the curves' per-step loss
    step_losses: list[tuple[float, ...]] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: Path, config: TrainConfig, metadata: dict[str, str]) -> ResumePoint:
        """Read ``run_dir/last``; refuse it if it was saved for another model or other settings."""
        source = run_dir / ckpt.LAST
        state = ckpt.load_trainer_state(run_dir)
        weights, saved_metadata = ckpt.load_model_weights(ckpt.resolve_checkpoint_dir(run_dir, (ckpt.LAST,)))
        identity = ckpt.parse_metadata(metadata)
        ckpt.check_same_model(saved_metadata, model=identity["model"], source=source,
                              model_options=identity["model_options"], num_classes=identity["num_classes"],
                              in_channels=identity["in_channels"])
        check_config_matches(config, state["config"], source)
        # The step counts micro-batches, and a stop comes only after a whole optimizer step. With other
        # accumulation steps the same optimizer steps (the same images: every micro-batch of a step comes
        # from that step's slice of the epoch's order) are other micro-batches.
        saved_accum = state["config"].get("grad_accum_steps", 1)
        step = state["step_in_epoch"] // saved_accum * config.grad_accum_steps
        return cls(weights, source, state["optimizer"], state["scheduler"], list(state["history"]),
                   state["best_acc"], state["best_epoch"], state["epoch"],
                   PartialEpoch(step, state.get("partial")),
                   [tuple(point) for point in state.get("step_losses", [])])


def check_config_matches(config: TrainConfig, saved: dict[str, Any], source: Path) -> None:
    """Refuse to resume with settings other than those the run was trained with (bar RESUMABLE_CHANGES)."""
    before = config_from_dict(saved, f"{source}/trainer.json").to_dict()
    now = config.to_dict()
    changed = {k for k in now if now[k] != before.get(k)}
    refused = changed - RESUMABLE_CHANGES
    if "epochs" in changed and config.schedule in ("onecycle", "cosine"):
        refused.add("epochs")  # these schedules are laid out over the whole run
    if refused:
        diffs = "; ".join(f"{k}: saved {before.get(k)!r}, now {now[k]!r}" for k in sorted(refused))
        raise ConfigError(f"--resume with other settings than {source} was trained with ({diffs}); "
                          "use the saved settings (see config.json) or start a new run")


def check_run_dir(config: TrainConfig) -> bool:
    """Whether ``config.out`` holds a run; refuses one that would be replaced without ``overwrite``.

    The CLI calls it before launching processes too, so a taken folder is one message, not one per rank.
    """
    run_dir = Path(config.out)
    has_run = (run_dir / ckpt.LAST).exists() or any(run_dir.glob(f".{ckpt.LAST}.old-*"))
    if has_run and not (config.resume or config.overwrite):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume, "
                          "replace it with --overwrite, or choose another --out")
    return has_run


def set_aside_run(run_dir: Path) -> None:
    """Move a run's checkpoints and logs into ``run_dir/.replaced-run`` (renames: nothing is copied)."""
    aside = run_dir / REPLACED_RUN
    aside.mkdir(exist_ok=True)
    moved_aside_saves = [p.name for p in run_dir.glob(".*.old-*")]  # a save killed between its renames
    for name in (*RUN_FILES, *moved_aside_saves):
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)


def settle_replaced_run(run_dir: Path) -> None:
    """Finish what --overwrite left: once the new run has a checkpoint, the old run is deleted; while it
    has none, the old run is moved back (so a new run failing before its first save loses nothing)."""
    aside = run_dir / REPLACED_RUN
    if not aside.is_dir():
        return
    if (run_dir / ckpt.LAST).exists():
        shutil.rmtree(aside, ignore_errors=True)
        return
    for entry in aside.iterdir():
        target = run_dir / entry.name
        if target.is_dir():  # best/ without last/: cannot be the new run's, which saves last/ first
            shutil.rmtree(target)
        os.replace(entry, target)
    aside.rmdir()


# ------------------------------------------------------------------------------ a partial epoch


@dataclass
class PartialEpoch:
    """An epoch stopped part-way (Ctrl-C, SIGTERM): the micro-batches done and every rank's running sums
    and RNG states, so that the resumed epoch replays the data order and ends as the uninterrupted one."""

    step: int = 0
    saved: dict[str, Any] | None = field(default=None, repr=False)

    def restore(self, sums: RunningSums, ctx: DistContext) -> tuple[int, int]:
        """Put the saved sums and RNG states back; returns (steps already done, images they held).

        Each rank takes back its own share. On another number of processes the shards differ anyway (the
        run goes on, not bit for bit): rank 0 takes the epoch's totals so far and its old RNG states.
        """
        if not self.step or self.saved is None:
            return 0, 0
        # checkpoints written before the ranks' shares were gathered hold rank 0's alone
        ranks = self.saved.get("ranks", [self.saved])
        images = int(sum(int(share["sums"][1]) for share in ranks))  # all-reduced counts
        if len(ranks) == ctx.world_size:
            sums.load_state(ranks[ctx.rank]["sums"])
            set_rng_states(ranks[ctx.rank]["rng"])
        elif ctx.is_main:
            sums.load_state(torch.stack([share["sums"] for share in ranks]).sum(0))
            set_rng_states(ranks[0]["rng"])
        return self.step, images

    @staticmethod
    def capture(sums: RunningSums, ctx: DistContext) -> dict[str, Any]:
        """Every rank's sums and RNG states (gathered on all ranks), for the checkpoint of a stop."""
        mine = {"sums": sums.state().cpu(), "rng": rng_states()}
        return {"ranks": all_gather_objects(mine, ctx)}


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}
    if torch.cuda.is_available():
        # this process's GPU only: a resume may see fewer GPUs (another node, one GPU per task under SLURM)
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy() if hasattr(keys, "numpy") else keys, pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints that saved every visible GPU's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
