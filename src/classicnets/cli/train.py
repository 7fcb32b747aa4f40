"""`classicnets train`: train a model; every TrainConfig field is a flag (generated, so they never drift).

    classicnets train --recipe quick                      # writes runs/quick
    classicnets train --recipe d2l --epochs 20 --out runs/d2l-20
    classicnets train --config my.yaml --lr 0.02
    classicnets train --resume --out runs/quick --epochs 4  # the saved settings, 4 epochs

Settings resolve as defaults < --recipe < --config FILE < the other flags; `--resume` starts from the
settings the run saved instead. Ctrl-C or SIGTERM finishes the step, saves last/ and exits with 130 or
143; `--resume` continues from there.
"""

from __future__ import annotations

import argparse
import sys

from ..training.config import (
    RECIPES,
    add_config_arguments,
    format_config,
    load_config_file,
    overrides_from_args,
    resolve_config,
)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name, help="train a model (recipes: " + ", ".join(RECIPES) + ")",
        description="Train a model from the zoo. Settings: defaults < --recipe < --config FILE < flags "
                    "(`classicnets recipes NAME` shows what a recipe sets); with --resume, the run's saved "
                    "settings < --config FILE < flags. The settings that differ from the defaults are "
                    "printed, and all of them saved as OUT/config.json.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="YAML, TOML or a run's config.json: settings that flags override")
    parser.add_argument("--show-settings", action="store_true",
                        help="print every resolved setting and where it came from, then exit "
                             "without training")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="run as N data-parallel processes on this machine, through torchrun")
    add_config_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiment import resumed_after_restart, train
    from ..launch import relaunch_with_torchrun
    from ..training.distributed import launcher_rank, under_launcher
    from ..training.loop import TrainingInterrupted
    from ..training.rundir import check_run_dir

    file_values = load_config_file(args.config) if args.config else {}
    config = resolve_config(None, file_values, overrides_from_args(args), override_source="flag",
                            file_source=f"--config {args.config}")  # checks before launching
    if args.show_settings:
        print(format_config(config, full=True))
        return 0
    config = resumed_after_restart(config)
    check_run_dir(config)  # before loading data, and once, before any process starts
    if args.nproc is not None and not under_launcher():
        return relaunch_with_torchrun(args.nproc, device=config.device)
    try:
        history = train(config)
    except TrainingInterrupted as stop:
        if launcher_rank() == 0:  # every process stopped and saved its share; one says so
            print(f"classicnets train: {stop}", file=sys.stderr)
        return stop.exit_code
    if history and launcher_rank() == 0:  # every process returns the history; one prints it
        best = max(history, key=lambda r: r["test_acc"])
        total = sum(r["time"] for r in history)
        epochs = f"{len(history)} epoch{'s' if len(history) != 1 else ''}"
        print(f"best test acc {best['test_acc']:.3f} (epoch {best['epoch']}); {epochs} in {total:.1f} sec\n"
              f"settings, checkpoints, logs and curves.png in {config.out}")
    return 0
