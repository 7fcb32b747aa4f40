"""`classicnets reproduce`: run one of the book's or the paper's experiments and judge its claims.

    classicnets reproduce --list
    classicnets reproduce d2l-alexnet --scale cpu
    classicnets reproduce paper-ablations --scale full --dataset /data/imagenet

Run it again after an interruption: finished runs are kept and an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..experiments.spec import SCALES

    parser = sub.add_parser(
        name, help="reproduce the book's and the paper's claims, with verdicts",
        description="Run an experiment's runs at a scale (resumably) and write results.json, report.md and "
                    "plots to --out.", allow_abbrev=False,
    )
    parser.add_argument("experiment", nargs="?", help="experiment name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments, one line each")
    parser.add_argument("--scale", default="cpu", choices=SCALES,
                        help="full: the source's settings (GPU-sized); cpu: a stated reduction for a "
                             "2-core CPU; smoke: minutes, for tests (default: cpu)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: runs/reproduce/NAME-SCALE)")
    parser.add_argument("--seeds", type=int, metavar="N", help="seeds per run (default: the scale's)")
    parser.add_argument("--dataset", help="train on this dataset or image folder instead of the experiment's")
    parser.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments import list_experiments, load_experiment, reproduce
    from ..experiments.runner import wrapped_print
    from ..experiments.spec import ExperimentError
    from ..training.loop import TrainingInterrupted

    if args.list:
        for name in list_experiments():
            wrapped_print(f"{name:<18} {load_experiment(name).title}")
        return 0
    if not args.experiment:
        raise ExperimentError("name an experiment (`classicnets reproduce --list` lists them)")
    try:
        reproduce(args.experiment, scale=args.scale, out=args.out, seeds=args.seeds, dataset=args.dataset,
                  data_dir=args.data_dir)
    except TrainingInterrupted as stop:
        print(f"classicnets reproduce: {stop}; run the same command again to continue", file=sys.stderr)
        return stop.exit_code
    return 0
