"""`classicnets train`: train a model; every TrainConfig field is a flag (generated, so they never drift).

    classicnets train --recipe quick --out runs/demo
    classicnets train --model alexnet_d2l --dataset fashion-mnist --recipe d2l --epochs 10
    classicnets train --config my.yaml --lr 0.02 --resume

Settings resolve as defaults < --recipe < --config FILE < the other flags. Ctrl-C or SIGTERM finishes the
step, saves last/ and exits with 130 or 143; `--resume` continues from there.
"""

from __future__ import annotations

import argparse
import sys

from ..training.config import (
    RECIPES,
    add_config_arguments,
    load_config_file,
    overrides_from_args,
    resolve_config,
)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="train a model (recipes: " + ", ".join(RECIPES) + ")",
        description="Train a model from the zoo. Settings: defaults < --recipe < --config FILE < flags; "
                    "the resolved settings are printed and saved as OUT/config.json.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings (flags override it)")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="run as N data-parallel processes on this machine, through torchrun")
    add_config_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiment import train
    from ..launch import relaunch_with_torchrun
    from ..training.distributed import launcher_rank, under_launcher
    from ..training.loop import TrainingInterrupted

    file_values = load_config_file(args.config) if args.config else {}
    config = resolve_config(None, file_values, overrides_from_args(args))  # checks before launching
    if args.nproc is not None and not under_launcher():
        return relaunch_with_torchrun(args.nproc)
    try:
        history = train(config)
    except TrainingInterrupted as stop:
        print(f"classicnets train: {stop}", file=sys.stderr)
        return stop.exit_code
    if history and launcher_rank() == 0:  # every process returns the history; one prints it
        best = max(history, key=lambda r: r["test_acc"])
        total = sum(r["time"] for r in history)
        print(f"best test acc {best['test_acc']:.3f} (epoch {best['epoch']}); {len(history)} epochs in "
              f"{total:.1f} sec; checkpoints, logs and curves.png in {config.out}")
    return 0
