"""`classicnets train --nproc N`: the same command again, started by torchrun as N processes on this node.

It is a shortcut for ``torchrun --standalone --nproc-per-node=N -m classicnets train ...`` (the
command minus ``--nproc``), run through torch's own launcher, ``torch.distributed.run``, so the
processes get the usual torchrun environment, rendezvous on a free local port and are torn down
together when one of them fails. For several nodes, restarts or custom rendezvous, call torchrun
directly (docs/distributed.md).
"""

from __future__ import annotations

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


def relaunch_with_torchrun(nproc: int, argv: list[str] | None = None) -> int:
    """Run this command again under torchrun with ``nproc`` processes; returns the exit code for the CLI.

    ``argv`` is the command line after the program name (default ``sys.argv[1:]``); ``--nproc`` is removed
    from it. Exit code: 0 when every process succeeds, otherwise the failing process's own code (2 for a
    user error it already printed), or 1 when it died from a signal.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: the number of processes must be at least 1")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    command_argv = strip_flag(list(sys.argv[1:] if argv is None else argv))
    launcher_args = get_args_parser().parse_args(torchrun_args(command_argv, nproc))
    try:
        run(launcher_args)
    except ChildFailedError as failure:
        rank, first = failure.get_first_failure()
        print(
            f"classicnets: rank {rank} of {nproc} failed (exit code {first.exitcode}); "
            "the other processes were stopped. Its error is printed above.",
            file=sys.stderr,
        )
        return first.exitcode if first.exitcode > 0 else 1
    return 0
