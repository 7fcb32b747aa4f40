"""Data-parallel scaling: training throughput of `classicnets train --nproc N` for several N on one node.

Each N runs the same command (same global batch, so the same optimisation) through torchrun, and the
throughput is read from the run's metrics.jsonl (``images_per_sec``: all ranks' training images over the
epoch's training time, evaluation excluded). The first epoch is skipped as warm-up (torch.compile,
cuDNN autotuning, NCCL set-up) unless only one was run. Efficiency = throughput(N) / (N x throughput(1)).

    python benchmarks/distributed_scaling.py --nproc 1 2 4 8 -- --recipe fast --epochs 3
    python benchmarks/distributed_scaling.py --nproc 1 2 --device cpu -- --recipe quick --epochs 2

Everything after ``--`` goes to `classicnets train` unchanged.
Results: benchmarks/results/distributed_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2],
                        help="process counts to run (default: 1 2)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu (default: auto)")
    parser.add_argument("--name", default="distributed_scaling",
                        help="results file name (default: %(default)s)")
    return parser.parse_args(own), train_args


def run_one(nproc: int, device: str, train_args: list[str], out_dir: Path) -> dict:
    """Train with ``nproc`` processes and return its throughput figures."""
    out = out_dir / f"nproc{nproc}"
    command = [sys.executable, "-m", "classicnets", "train", "--nproc", str(nproc), "--device", device,
               "--out", str(out), "--overwrite", "--no-progress", *train_args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    measured = history[1:] or history  # the first epoch pays for compilation and warm-up
    rate = sum(r["images_per_sec"] for r in measured) / len(measured)
    return {"nproc": nproc, "images_per_sec": rate, "epochs_measured": len(measured),
            "test_acc": history[-1]["test_acc"], "epoch_train_time": [r["train_time"] for r in history]}


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(argv)
    device = common.resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        rows = [run_one(n, device.type, train_args, Path(tmp)) for n in args.nproc]
    base = next((r["images_per_sec"] for r in rows if r["nproc"] == 1), None)
    for r in rows:
        r["speedup"] = r["images_per_sec"] / base if base else None
        r["efficiency"] = r["speedup"] / r["nproc"] if base else None
    info = common.machine_info(device)
    table = common.markdown_table(
        ["processes", "images/s", "speed-up", "efficiency", "final test acc"],
        [[r["nproc"], common.fmt(r["images_per_sec"]), common.fmt(r["speedup"], 2),
          common.fmt(r["efficiency"], 2), f"{r['test_acc']:.4f}"] for r in rows],
    )
    markdown = (f"# Data-parallel scaling on {common.device_label(info)}\n\n"
                f"`classicnets train {' '.join(train_args)}`, {device.type}, "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'torchrun default')}\n\n{table}\n")
    payload = {"machine": info, "train_args": train_args, "runs": rows}
    common.publish(args.name, payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
