"""Throughput of two revisions of classicnets, measured interleaved in one run, as ratios.

The check that a change meant to leave speed alone (a refactoring, a moved module) did: each round runs
every probe of revision_probe.py once per revision, each in a fresh process with that revision's ``src``
on PYTHONPATH, the two revisions back to back (who goes first alternates), so a burst of load
from other processes falls on both alike. The probe is this tree's file for both revisions: the same
measuring code, only the library differs. Reported:
for each probe, the median of the per-round ratios after/before, with their range, and each side's median.

Default probes: one epoch of the ``quick`` recipe (`make demo`'s job) and of the ``d2l`` recipe through
the Trainer, and the bf16 + channels_last step of the models whose blocks live in their own modules
(GoogLeNet's Inception, ResNet's residual block, NiN's mlpconv, the paper AlexNet's LRN).

    python benchmarks/compare_revisions.py 1be44e9              # 1be44e9 against the working tree
    python benchmarks/compare_revisions.py v1 v2 --reps 7 --probes step:resnet18:96
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import common

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("revision_probe.py")
WORKING_TREE = "working-tree"
DEFAULT_PROBES = (
    "trainer:quick:16384",
    "trainer:d2l:512",
    "step:googlenet:96",
    "step:resnet18:96",
    "step:nin:224",
    "step:alexnet:227",
)


def export_revision(revision: str, into: Path) -> Path:
    """The ``src`` folder of ``revision`` written under ``into`` (git archive: the repository's worktrees and
    branches are left alone); the working tree's own ``src`` for ``working-tree``."""
    if revision == WORKING_TREE:
        return REPO / "src"
    try:
        archive = subprocess.run(["git", "archive", revision, "src"], cwd=REPO, capture_output=True,
                                 check=True).stdout  # fmt: skip
    except subprocess.CalledProcessError as err:
        why = err.stderr.decode().strip()
        raise SystemExit(f"error: git cannot export revision {revision!r}: {why}") from None
    target = into / revision.replace("/", "_")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def run_probe(src: Path, probes: list[str], data_dir: str | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, str(PROBE), "--probes", *probes]
    if data_dir:
        command += ["--data-dir", data_dir]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the probe failed with {src} on the path:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # the runs' own lines come first


def interleaved_rounds(sources: dict[str, Path], probes: list[str], reps: int, data_dir: str | None) -> list:
    """Each probe in a process of its own, so none runs in a state an earlier one left (the Trainer sets
    the host allocator's policy, for one); the two revisions back to back, who goes first alternating from
    one probe and round to the next, so that each goes first equally often whatever the number of rounds."""
    rounds = []
    for rep in range(reps):
        measured = {label: {} for label in sources}
        for index, probe in enumerate(probes):
            order = list(sources) if (rep + index) % 2 == 0 else list(reversed(sources))
            for label in order:
                measured[label].update(run_probe(sources[label], [probe], data_dir))
        rounds.append(measured)
        ratios = "  ".join(f"{p} {measured['after'][p] / measured['before'][p]:.3f}" for p in probes)
        print(f"round {rep + 1}/{reps} (after/before): {ratios}", flush=True)
    return rounds


def summarise(rounds: list[dict], probes: list[str]) -> list[dict]:
    rows = []
    for probe in probes:
        before = [r["before"][probe] for r in rounds]
        after = [r["after"][probe] for r in rounds]
        ratios = [a / b for a, b in zip(after, before, strict=True)]
        rows.append({"probe": probe, "before_images_per_s": common.median(before),
                     "after_images_per_s": common.median(after), "ratio_median": common.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "ratios": ratios})  # fmt: skip
    return rows


def render_markdown(rows: list[dict], revisions: dict, machine: dict, reps: int) -> str:
    table = common.markdown_table(
        ["probe", "before img/s", "after img/s", "after/before", "range over rounds"],
        [[r["probe"], common.fmt(r["before_images_per_s"]), common.fmt(r["after_images_per_s"]),
          f"{r['ratio_median']:.3f}", f"{r['ratio_min']:.3f} - {r['ratio_max']:.3f}"] for r in rows],
    )  # fmt: skip
    return (
        f"Before = `{revisions['before']}`, after = `{revisions['after']}`; {common.device_label(machine)}, "
        f"{machine['date_utc']}. Median over {reps} interleaved rounds, each probe of each revision in "
        f"a fresh process. `trainer:RECIPE:N` = one epoch of the recipe on N Fashion-MNIST images through "
        f"`classicnets.train` (training phase img/s); `step:MODEL:SIDE` = the bf16 + channels_last "
        f"training step at batch 32 on a fixed batch, freed host memory kept (the Trainer's CPU "
        f"step).\n\n{table}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("before", help="git revision measured as 'before'")
    p.add_argument("after", nargs="?", default=WORKING_TREE, help="git revision, or the working tree")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds; medians are reported")
    p.add_argument("--probes", nargs="+", default=list(DEFAULT_PROBES),
                   help="trainer:RECIPE:SUBSET and/or step:MODEL:SIDE")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: the usual places)")
    p.add_argument("--out", default="compare_revisions", help="result name under benchmarks/results/")
    args = p.parse_args(argv)

    revisions = {"before": args.before, "after": args.after}
    with tempfile.TemporaryDirectory(prefix="classicnets-revisions-") as tmp:
        sources = {label: export_revision(rev, Path(tmp)) for label, rev in revisions.items()}
        rounds = interleaved_rounds(sources, args.probes, args.reps, args.data_dir)
    rows = summarise(rounds, args.probes)
    import torch  # only for the machine record: the probes ran in their own processes

    machine = common.machine_info(torch.device("cpu"))
    settings = {"reps": args.reps, "probes": args.probes}
    payload = {"benchmark": "compare_revisions", "machine": machine, "revisions": revisions,
               "settings": settings, "rows": rows, "rounds": rounds}  # fmt: skip
    common.publish(args.out, payload, render_markdown(rows, revisions, machine, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
