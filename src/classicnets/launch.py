"""`classicnets train --nproc N`: the same command again, started by torchrun as N processes on this node.

It is a shortcut for ``torchrun --standalone --nproc-per-node=N -m classicnets train ...`` (the
command minus ``--nproc``), run through torch's own launcher, ``torch.distributed.run``, so the
processes get the usual torchrun environment, rendezvous on a free local port and are torn down
together when one of them fails. For several nodes, restarts or custom rendezvous, call torchrun
directly (docs/distributed.md).
"""

from __future__ import annotations

import os
import sys

from .errors import ConfigError

NPROC_FLAG = "--nproc"


def strip_flag(argv: list[str], flag: str = NPROC_FLAG) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE`` (the relaunched command must not relaunch again)."""
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == flag:
            skip_next = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def torchrun_args(command_argv: list[str], nproc: int) -> list[str]:
    """torchrun's arguments that run ``python -m classicnets <command_argv>`` as ``nproc`` local processes."""
    return [
        "--standalone",  # one node: rendezvous on a free localhost port, no MASTER_PORT clashes
        f"--nproc-per-node={nproc}",
        "--module",
        "classicnets",
        *command_argv,
    ]


def relaunch_with_torchrun(nproc: int, argv: list[str] | None = None, device: str = "auto") -> int:
    """Run this command again under torchrun with ``nproc`` processes; returns the exit code for the CLI.

    ``argv`` is the command line after the program name (default ``sys.argv[1:]``); ``--nproc`` is removed
    from it. Exit code: 0 when every process succeeds, otherwise the failing process's own code (2 for a
    user error it already printed), or 1 when it died from a signal; 130 or 143 when Ctrl-C or SIGTERM
    stopped the processes (each saves last/ first).
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: the number of processes must be at least 1")
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    cores = os.cpu_count() or 1
    if on_cpu and nproc > cores:
        print(f"classicnets: warning: --nproc {nproc} on a CPU with {cores} cores: every process holds "
              f"its own copy of the model, the data and its activations, and they share {cores} cores, so "
              f"this is slower than one process and uses about {nproc}x the memory. On a CPU, --nproc "
              "tests distributed code; it does not speed up training", file=sys.stderr)
    command_argv = strip_flag(list(sys.argv[1:] if argv is None else argv))
    launcher_args = get_args_parser().parse_args(torchrun_args(command_argv, nproc))
    try:
        run(launcher_args)
    except (SignalException, KeyboardInterrupt) as stop:
        import signal

        signum = getattr(stop, "sigval", signal.SIGINT)
        print(f"classicnets: stopped by {signal.Signals(signum).name}: the {nproc} processes saved last/ "
              "where they could; continue with --resume", file=sys.stderr)
        return 128 + int(signum)
    except ChildFailedError as failure:
        rank, first = failure.get_first_failure()
        print(
            f"classicnets: rank {rank} of {nproc} failed (exit code {first.exitcode}); "
            "the other processes were stopped. Its error is printed above.",
            file=sys.stderr,
        )
        return first.exitcode if first.exitcode > 0 else 1
    return 0
