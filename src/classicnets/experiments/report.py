"""report.md and the plots of an experiment's results: claims first, then runs, then figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .claims import column
from .spec import Experiment, Figure

ACCURACY_PNG = "accuracy.png"
STYLES = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}


def write_report(results: dict[str, Any], path: Path, figures: list[str]) -> None:
    path.write_text(render_report(results, figures), encoding="utf-8")


def render_report(results: dict[str, Any], figures: list[str]) -> str:
    lines = [
        f"# {results['experiment']}: {results['title']}",
        "",
        f"Scale **{results['scale']}**, {results['seeds']} seed(s) per run; measured on {results['machine']} "
        f"with torch {results['torch']}, {results['date']}. Source: {results['source']}.",
        "",
        f"Reproduce with `{results['command']}` (finished runs are kept, so a second call only rewrites this "
        "report).",
        "",
        "## What this scale changes",
        "",
        results["scale_note"],
        "",
        "## Claims",
        "",
        "u is twice the standard error of the mean over seeds: the spread the rules allow for.",
        "",
        "| claim | source | reference | measured (mean ± std, n) | verdict | rule |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_claim_row(c) for c in results["claims"]]
    notes = [f"- **{c['id']}**: {c['note']}" for c in results["claims"] if c.get("note")]
    bounds = [f"- **{c['id']}**: {', '.join(c['lower_bounds'])} never crossed the threshold; its run length "
              "counts, so the measured value is a bound" for c in results["claims"] if c.get("lower_bounds")]
    if notes or bounds:
        lines += ["", *notes, *bounds]
    lines += ["", "## Runs", "", "| run | seed | status | epochs | train acc | test acc | img/s | minutes | "
              "settings beyond the base |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_run_row(r, results["base"]) for r in results["runs"]]
    failed = [r for r in results["runs"] if r["status"] != "done"]
    if failed:
        lines += ["", "Runs that did not finish:", ""]
        lines += [f"- {r['run']} seed {r['seed']}: {r['status']}: {r.get('error', '')}" for r in failed]
    lines += ["", "Settings every run shares: `" + json.dumps(results["base"], sort_keys=True) + "`", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def _claim_row(c: dict[str, Any]) -> str:
    reference = "-" if c["reference"] is None else f"{c['reference']:g}"
    if c["n"]:
        measured = f"{_fmt(c['mean'])} ± {_fmt(c['std'])} (n={c['n']})"
    else:
        judged_at = c.get("judged_at")
        measured = f"(judged at {', '.join(judged_at)})" if judged_at else "-"
    return (f"| {c['claim']} | {c['source']} | {reference} | {measured} | **{c['verdict']}** | "
            f"{c['rule_text']} |")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def _run_row(record: dict[str, Any], base: dict[str, Any]) -> str:
    history = record.get("history") or []
    last = history[-1] if history else {}
    differs = {k: v for k, v in record["settings"].items() if base.get(k) != v and k != "seed"}
    minutes = sum(r.get("time", 0.0) for r in history) / 60
    speed = [r["images_per_sec"] for r in history if "images_per_sec" in r]
    return (f"| {record['run']} | {record['seed']} | {record['status']} | {len(history)} | "
            f"{_fmt(last.get('train_acc'))} | {_fmt(last.get('test_acc'))} | "
            f"{sum(speed) / len(speed):,.0f} | {minutes:.1f} | `{json.dumps(differs, sort_keys=True)}` |"
            if speed else
            f"| {record['run']} | {record['seed']} | {record['status']} | 0 | - | - | - | - | "
            f"`{json.dumps(differs, sort_keys=True)}` |")


def verdict_table(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per claim of several experiments' results, each linked to its report: the README's
    Reproductions table. ``reports`` pairs a link to each report.md with its results.json contents."""
    lines = ["| experiment (scale) | claim | reference | measured | verdict |", "|---|---|---|---|---|"]
    for link, results in reports:
        name = f"[{results['experiment']}]({link}) ({results['scale']})"
        for c in results["claims"]:
            reference = "-" if c["reference"] is None else f"{c['reference']:g}"
            measured = f"{_fmt(c['mean'])} ± {_fmt(c['std'])} (n={c['n']})" if c["n"] else "-"
            lines.append(f"| {name} | {c['claim']} | {reference} | {measured} | {c['verdict']} |")
    machines = sorted({f"{r['machine']}, torch {r['torch']}, {r['date'][:10]}" for _, r in reports})
    return "\n".join(lines) + f"\n\nMeasured on {'; '.join(machines)}."


# ------------------------------------------------------------------------------------------------ plots


def write_plots(experiment: Experiment, results: dict[str, Any], out: Path) -> list[str]:
    """accuracy.png (test accuracy per epoch, every run, seeds as a band) and the experiment's figures."""
    runs = {name: "solid" for name in experiment.runs}
    accuracy = Figure(file=ACCURACY_PNG, title=f"{experiment.name} ({results['scale']}): test accuracy",
                      key="test_acc", runs=runs, ylabel="test accuracy")
    written = []
    for figure in (accuracy, *experiment.figures):
        if _plot(figure, results, out / figure.file):
            written.append(figure.file)
    return written


def _plot(figure: Figure, results: dict[str, Any], path: Path) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for index, (run, style) in enumerate(figure.runs.items()):
        curves = [column(r["history"], figure.key) for r in results["runs"]
                  if r["run"] == run and r.get("history")]
        if not curves:
            continue
        drawn = True
        length = min(len(c) for c in curves)
        epochs = list(range(1, length + 1))
        columns = list(zip(*(c[:length] for c in curves), strict=True))
        mean = [sum(col) / len(col) for col in columns]
        color = f"C{index % 10}"
        label = run + (f" ({len(curves)} seeds)" if len(curves) > 1 else "")
        ax.plot(epochs, mean, STYLES.get(style, "-"), color=color, label=label, marker="o", markersize=3)
        if len(curves) > 1:
            ax.fill_between(epochs, [min(col) for col in columns], [max(col) for col in columns],
                            color=color, alpha=0.15, linewidth=0)
    if not drawn:
        return False
    if figure.hline is not None:
        ax.axhline(figure.hline, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(f"threshold {figure.hline:g}", (1, figure.hline), textcoords="offset points",
                    xytext=(2, 3), fontsize=8, color="grey")
    if figure.log_y:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(figure.ylabel or figure.key.replace("_", " "))
    ax.set_title(figure.title, fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True

