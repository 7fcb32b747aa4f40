"""Regenerate the generated blocks of the README and docs: `python -m classicnets.tools.readme_tables --write
README.md` (`make models-table` rewrites every file that has blocks).

A block sits between `<!-- BEGIN name -->` and `<!-- END name -->`; tests fail when the README
and the generator disagree, so the tables cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from ..training.logging import epoch_line
from ..zoo_table import zoo_rows, zoo_table_markdown

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
BENCHMARK_TABLE = RESULTS / "README-table.md"
EXPERIMENTS = Path(__file__).resolve().parents[3] / "docs" / "experiments"  # committed reports
PAGE_BYTES = 4096  # a minor page fault maps one 4 KiB page


def benchmark_tables() -> str:
    """The tables benchmarks/run_all.py wrote from the recorded results, without its header comment."""
    lines = BENCHMARK_TABLE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.startswith("<!--")).strip()


def _record(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _machine(record: dict) -> str:
    machine = record["machine"]
    return (f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch_version']}, "
            f"{machine['date_utc']}")


def demo_result() -> str:
    """The quick recipe's recorded run (``make demo``'s settings): its epoch lines and final accuracy."""
    record = _record("time_to_accuracy_quick")
    run = record["runs"]["quick"]
    minutes, seconds = divmod(round(run["wall_seconds"]), 60)
    lines = "\n".join(epoch_line(epoch) for epoch in run["history"])
    epochs, accuracy = len(run["history"]), run["final_test_acc"]
    return (f"```\n{lines}\n```\n\n"
            f"That is {accuracy:.3f} test accuracy on the real Fashion-MNIST test set after {epochs} epochs, "
            f"{minutes} min {seconds} s from the call of `classicnets.train` to its return "
            f"({_machine(record)}; `benchmarks/time_to_accuracy.py --recipes quick --subset 0`, "
            "recorded in `benchmarks/results/time_to_accuracy_quick.md`).")


def vs_d2l_result() -> str:
    """The recorded comparison with d2l's pipeline and the training-step grid, as one paragraph."""
    vs = _record("vs_d2l")
    ratios = [epoch["speedup"] for epoch in vs["epochs"]]
    settings, summary = vs["settings"], vs["summary"]
    steps = settings["steps_per_epoch"] * settings["epochs"]
    grid = {row["config"]: row for row in _record("train_step")["rows"] if row["model"] == "alexnet_d2l"}
    layout = grid["bf16+cl"]["speedup_vs_fp32"]  # bf16 autocast + channels_last
    reuse = grid["bf16+cl+reuse"]["speedup_vs_fp32"]  # and freed host memory kept
    faults = grid["bf16+cl"]["page_faults_per_step"]
    ours, theirs = summary["classicnets_final_test_acc"], summary["d2l_final_test_acc"]
    return (
        f"classicnets trains **{statistics.median(ratios):.2f}x** faster (median of the per-epoch ratios "
        f"{min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} epochs) at the same accuracy per epoch "
        f"({ours:.3f} against d2l's {theirs:.3f} after {steps} steps). The training step alone, at the "
        f"recipe's batch of {settings['batch_size']}, is {reuse:.2f}x d2l's fp32 step in the recorded run: "
        f"bf16 autocast with channels_last gives {layout:.2f}x, and keeping freed host memory for the next "
        f"step, instead of faulting {faults:,.0f} fresh pages ({faults * PAGE_BYTES / 1e9:.2f} GB) back in "
        f"every step, another {reuse / layout:.2f}x."
    )


def revisions_result() -> str:
    """The recorded interleaved throughput comparison of two revisions (benchmarks/compare_revisions.py)."""
    record = _record("compare_revisions")
    table = (RESULTS / "compare_revisions.md").read_text().split("\n\n", 1)[1].strip()
    worst = min(record["rows"], key=lambda row: row["ratio_median"])
    best = max(record["rows"], key=lambda row: row["ratio_median"])
    revisions, reps = record["revisions"], record["settings"]["reps"]
    return (f"`python benchmarks/compare_revisions.py {revisions['before']} {revisions['after']}` "
            f"({_machine(record)}; {reps} interleaved rounds, each probe of each revision in a fresh "
            f"process): the medians of the per-round ratios after/before run from "
            f"{worst['ratio_median']:.3f} (`{worst['probe']}`) to {best['ratio_median']:.3f} "
            f"(`{best['probe']}`).\n\n{table}")


def experiment_verdicts() -> str:
    """Every claim of the committed experiment reports (docs/experiments/*/results.json) with its verdict."""
    from ..experiments.report import verdict_table

    reports = [(f"docs/experiments/{path.parent.name}/report.md", json.loads(path.read_text()))
               for path in sorted(EXPERIMENTS.glob("*/results.json"))]
    return verdict_table(reports)


GENERATORS = {
    "models": lambda: zoo_table_markdown(zoo_rows()),
    "benchmarks": benchmark_tables,
    "demo": demo_result,
    "vs-d2l": vs_d2l_result,
    "experiments": experiment_verdicts,
    "revisions": revisions_result,
}


def render_blocks(text: str) -> str:
    for name, generate in GENERATORS.items():
        if f"<!-- BEGIN {name} -->" not in text:
            continue
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        text = pattern.sub(_replacement(generate()), text)
    return text


def _replacement(body: str):
    return lambda match: match.group(1) + body + "\n" + match.group(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, required=True, help="the Markdown file to update in place")
    path = parser.parse_args().write
    path.write_text(render_blocks(path.read_text()))


if __name__ == "__main__":
    main()
