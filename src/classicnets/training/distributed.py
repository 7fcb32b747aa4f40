"""Distributed data-parallel training on PyTorch's own engine: torch.distributed, DDP and torchrun.

One process per device. The launcher (``torchrun``, or SLURM's ``srun``) starts the processes and tells
each one who it is through environment variables; :func:`init_distributed` reads them, picks the backend
by device (NCCL for CUDA, gloo for CPU) and joins the process group. Without those variables it returns a
single-process context and creates no process group, so the same training code runs either way.

    ctx = init_distributed("auto")
    model = wrap_model(model.to(ctx.device), ctx, sync_batchnorm=True)
    ...
    all_reduce_(loss_sum, ctx)          # sums over ranks, on ctx.device
    if ctx.is_main: save_checkpoint(unwrap_model(model), ...)
    shutdown_distributed(ctx)

The process group is created with a bounded timeout: when a rank dies, the others stop at their next
collective within that time with an error that names the timeout, instead of waiting forever. Under
torchrun the launcher also notices the dead worker at once, tears the group down and (with
``--max-restarts``) starts it again, and the trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ClassicnetsError, ConfigError
from ..runtime import resolve_device

# How long a collective may wait for a missing rank before every other rank fails with an error.
# Long enough for rank 0 to write a checkpoint or evaluate while the others wait at a barrier;
# short enough that a dead rank never leaves a job hanging for torch's 10-minute (NCCL: 30-minute) default.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "CLASSICNETS_DIST_TIMEOUT"  # seconds; overrides DEFAULT_TIMEOUT_S (tests use a few seconds)

# How gloo words a failure caused by another rank (a closed socket, a timed-out wait); NCCL raises DistError
_PEER_FAILURE = re.compile(
    r"connection (reset|closed)|timed out|timeout|broken pipe|remote process exited", re.IGNORECASE
)

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


class LostRankError(ClassicnetsError, RuntimeError):
    """A collective failed on this rank because another rank died or stopped answering."""


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "nccl" or "gloo"; None when running as a single process

    @property
    def is_main(self) -> bool:
        """The rank that prints, plots and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launcher_env(env: dict[str, str] | None = None) -> dict[str, int] | None:
    """Rank, world size and local rank from torchrun's or SLURM's variables; None if neither set them.

    torchrun's variables win when both are present (torchrun started inside a SLURM allocation).
    For SLURM it also fills in MASTER_ADDR (the first host of the job) and MASTER_PORT when missing,
    because ``srun`` sets neither and the ``env://`` rendezvous needs both.
    """
    env = os.environ if env is None else env
    if _started_by_torchrun(env):
        return {
            "rank": _int_var(env, "RANK"),
            "world_size": _int_var(env, "WORLD_SIZE"),
            "local_rank": _int_var(env, "LOCAL_RANK", default="0"),
        }
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        if "MASTER_ADDR" not in env:
            nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodelist:
                raise ConfigError(
                    "SLURM set SLURM_PROCID but not SLURM_JOB_NODELIST, so the address of rank 0 is unknown; "
                    "export MASTER_ADDR=<host of rank 0> in the job script"
                )
            env["MASTER_ADDR"] = first_slurm_host(nodelist)
        if "MASTER_PORT" not in env:
            # a port derived from the job id, so two jobs sharing a node do not collide
            env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
        return {
            "rank": _int_var(env, "SLURM_PROCID"),
            "world_size": _int_var(env, "SLURM_NTASKS"),
            "local_rank": _int_var(env, "SLURM_LOCALID", default="0"),
        }
    return None


def under_launcher(env: dict[str, str] | None = None) -> bool:
    """True inside a process started by torchrun, or by SLURM as one of several tasks: ``--nproc`` then
    must not start torchrun again."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env or _started_by_torchrun(env):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1


def _started_by_torchrun(env) -> bool:
    return "RANK" in env and "WORLD_SIZE" in env


def launcher_rank() -> int:
    """This process's rank as its launcher numbered it; 0 without a launcher (needs no process group)."""
    found = launcher_env(dict(os.environ))  # a copy: reading the rank must not set MASTER_ADDR
    return found["rank"] if found else 0


def restart_count() -> int:
    """How many times torchrun has restarted this job's processes after a failure (0 on the first attempt)."""
    return _int_var(os.environ, "TORCHELASTIC_RESTART_COUNT", default="0")


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,09],cpu1"`` -> ``"gpu03"``.

    This is what ``scontrol show hostnames $SLURM_JOB_NODELIST | head -n1`` prints, without needing scontrol.
    """
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise ConfigError(
            f"SLURM_JOB_NODELIST={nodelist!r} is not a node list like 'gpu[01-04]'; "
            "export MASTER_ADDR=<host of rank 0> in the job script"
        )
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]  # keeps zero padding: "03-05" -> "03"
    return prefix + first


def _int_var(env, name: str, default: str | None = None) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"environment variable {name}={value!r} should be a whole number; "
            "launch with torchrun or srun, which set it"
        ) from None


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} should be a number of seconds, e.g. 300") from None
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} should be a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def _process_device(device: str, local_rank: int, distributed: bool) -> torch.device:
    """The device of this process: :func:`~classicnets.runtime.resolve_device`, then under a launcher the
    GPU of its LOCAL_RANK."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if distributed or resolved.index is None:
            # one process per GPU: the launcher's LOCAL_RANK picks it, whatever index was asked for;
            # srun --gpus-per-task=1 instead binds one GPU to each task, the only one it sees
            index = local_rank if distributed else torch.cuda.current_device()
            bound_by_slurm = "TORCHELASTIC_RUN_ID" not in os.environ and "SLURM_LOCALID" in os.environ
            if distributed and bound_by_slurm and torch.cuda.device_count() == 1:
                index = 0
            if index >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                    "start at most one process per GPU (--nproc_per_node)"
                )
            resolved = torch.device("cuda", index)
        torch.cuda.set_device(resolved)
    elif resolved.type != "cpu" and distributed:
        raise ConfigError(
            f"distributed training runs on cuda (NCCL) or cpu (gloo), not on {resolved.type!r}; "
            "use --device cuda or --device cpu"
        )
    return resolved


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group the launcher set up, or return a single-process context when there is none.

    ``device`` is "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N". Under a launcher each
    process uses the GPU of its LOCAL_RANK. The backend follows the device: NCCL for CUDA, gloo for CPU.
    Calling it again in a process that already joined a group returns the same context.
    """
    found = launcher_env()
    if found is None or found["world_size"] <= 1:
        local_rank = 0 if found is None else found["local_rank"]
        return DistContext(0, 1, local_rank, _process_device(device, local_rank, False), None)
    rank, world_size, local_rank = found["rank"], found["world_size"], found["local_rank"]
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    resolved = _process_device(device, local_rank, True)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(
                    f"{name} is not set, so rank {rank} cannot find rank 0; launch with torchrun "
                    "(which sets it) or export it"
                )
        kwargs = {"device_id": resolved} if backend == "nccl" else {}  # NCCL: bind the GPU eagerly
        timeout = _timeout()
        dist.init_process_group(
            backend=backend, store=_attempt_store(rank, world_size, timeout), rank=rank,
            world_size=world_size, timeout=timeout, **kwargs,
        )
    return DistContext(rank, world_size, local_rank, resolved, backend)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The env:// rendezvous store, with keys private to this torchrun attempt.

    torchrun's restarts (--max-restarts) reuse the agent's store, and the process group publishes each
    rank's address under the same keys every attempt; a restarted rank could read the address of a
    rank that died in the previous attempt and fail with gloo's "connectFullMesh ... Connection
    refused". A per-attempt prefix keeps each attempt's keys apart (seen with torch 2.13).
    """
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
    return dist.PrefixStore(f"classicnets/attempt_{restart_count()}/", store)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a single process or if it is already gone)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, sync_batchnorm: bool = False) -> nn.Module:
    """The model ready for data-parallel training: DDP over the ranks, with BatchNorm synchronised on request.

    The model must already be on ``ctx.device``. Single process: the model itself (SyncBatchNorm
    would have no one to sync with, so it is not applied). SyncBatchNorm makes BatchNorm use the
    statistics of the global batch rather than each rank's shard; torch implements it on CUDA only.
    DDP broadcasts rank 0's weights at construction, so every rank starts from the same parameters
    even if each initialised its own.
    """
    if not ctx.distributed:
        return model
    if sync_batchnorm:
        if ctx.device.type == "cpu":
            # torch's SyncBatchNorm reduces its statistics on GPUs only; it would fail at the first batch
            raise ConfigError(
                "SyncBatchNorm (--sync-batchnorm) needs CUDA devices; torch does not support it on the CPU. "
                "Drop --sync-batchnorm to let each CPU rank normalise with its own batch statistics"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (and/or torch.compile) wrapper, whose state_dict has no prefixes."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def all_reduce_(tensor: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over all ranks (sum, max, min or product) and return it.

    A no-op for a single process. The tensor must live on ``ctx.device`` (NCCL reduces GPU tensors only);
    divide a sum by ``ctx.world_size`` for a mean.
    """
    if op not in _REDUCE_OPS:
        raise ConfigError(f"all_reduce op {op!r} is not one of {sorted(_REDUCE_OPS)}")
    if ctx.distributed:
        dist.all_reduce(tensor, op=_REDUCE_OPS[op])
    return tensor


def all_gather_objects(value: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` for a single process).

    For small host-side state (RNG states, a checkpoint's per-rank sums): the values are pickled, so they
    should hold CPU tensors; the group is the run's own, so the pickles come from its own processes.
    """
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)  # on NCCL, through the device torch.cuda.set_device chose
    return gathered


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (a no-op for a single process)."""
    if not ctx.distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


@contextmanager
def lost_rank_errors(ctx: DistContext) -> Iterator[None]:
    """Turn a collective that fails because another rank died or stalled into a clear :class:`LostRankError`.

    gloo and NCCL report a dead peer as a low-level socket or watchdog error on every surviving rank;
    this says what happened and where to look. Other errors pass through unchanged.
    """
    try:
        yield
    except (dist.DistError, RuntimeError) as error:
        if not ctx.distributed or isinstance(error, ClassicnetsError):
            raise
        if not (isinstance(error, dist.DistError) or _PEER_FAILURE.search(str(error))):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        # a closed connection means a rank exited (failed, or stopped by Ctrl-C); only a timeout means waiting
        timed_out = re.search(r"timed out|timeout", str(error), re.IGNORECASE)
        why = (f"another rank did not answer within {_timeout().total_seconds():g} s ({TIMEOUT_ENV})"
               if timed_out else "another rank exited (failed, or was stopped)")
        raise LostRankError(
            f"rank {ctx.rank} of {ctx.world_size} stopped: {why}. The log of the rank that failed first "
            f"shows the cause; under torchrun, --max-restarts resumes from the last checkpoint. "
            f"[{first_line}]"
        ) from error
