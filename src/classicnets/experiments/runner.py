"""`classicnets reproduce`: run an experiment's runs at a scale, resumably, then judge its claims.

Each run is an ordinary run directory (``OUT/runs/RUN-seedN``) that ``eval``, ``predict`` and ``--resume``
understand. A finished run leaves ``reproduce.json`` beside its checkpoints and is not run again; an
interrupted one continues from its last checkpoint; a run that fails or diverges is recorded as such and
shows in the report with why, and the experiment goes on without it.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ClassicnetsError
from ..training.logging import METRICS_JSONL, write_text_atomic
from . import claims as claimlib
from .spec import Experiment, ExperimentError, load_experiment

MARKER = "experiment.json"  # which experiment and scale an output folder holds
RUN_STATUS = "reproduce.json"  # a run's outcome, written when it ends
RESULTS_JSON, REPORT_MD = "results.json", "report.md"


def default_out(name: str, scale: str) -> Path:
    return Path("runs") / "reproduce" / f"{name}-{scale}"


def wrapped_print(text: str) -> None:
    """``print``, with long lines folded to the terminal's width (80 columns in logs)."""
    import textwrap

    from ..text_tables import terminal_width

    print(textwrap.fill(text, width=terminal_width(), subsequent_indent="    ", break_long_words=False,
                        break_on_hyphens=False))


def reproduce(name: str | Experiment, scale: str = "cpu", out: str | Path | None = None,
              seeds: int | None = None, dataset: str | None = None, data_dir: str | None = None,
              print_fn: Callable[[str], None] = wrapped_print) -> dict[str, Any]:
    """Run experiment ``name`` (a shipped one's name, or an :class:`Experiment` of your own) at ``scale``
    into ``out`` and return its results, also written there as ``results.json``, ``report.md`` and PNG
    plots. Running it again redoes nothing that finished and resumes a run that was interrupted."""
    experiment = name if isinstance(name, Experiment) else load_experiment(name)
    name = experiment.name
    chosen = experiment.scale(scale)
    n_seeds = seeds or chosen.seeds
    if n_seeds < 1:
        raise ExperimentError(f"seeds must be at least 1; got {n_seeds}")
    out = Path(out) if out is not None else default_out(name, scale)
    _claim_folder(out, experiment.name, scale)
    jobs = [(run, seed) for run in experiment.runs for seed in range(n_seeds)]
    caller = {"dataset": dataset, "data_dir": data_dir}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    clock = _Clock(len(jobs))
    for index, (run, seed) in enumerate(jobs, start=1):
        settings = {**experiment.settings(run, scale, **caller), "seed": seed}
        run_dir = out / "runs" / f"{run}-seed{seed}"
        why_not = chosen.skip.get(run) or _colour_missing(experiment, run, settings)
        if why_not:
            clock.skipped()
            records[(run, seed)] = {"run": run, "seed": seed, "status": "skipped", "error": why_not,
                                    "settings": settings, "history": [], "evals": {}}
            continue
        record = _finished(run_dir, settings)
        if record is None:
            print_fn(f"[{index}/{len(jobs)}] {experiment.name} ({scale}): {run}, seed {seed}; {clock.left()}")
            started = time.perf_counter()
            record = _run_one(experiment, run, settings, run_dir, print_fn)
            clock.done(time.perf_counter() - started)
            records[(run, seed)] = record
            # the report so far, so a stopped experiment still shows what it has (and what it lacks)
            _write_outputs(experiment, _results(experiment, scale, n_seeds, out, records, jobs[index:]), out)
        else:
            clock.skipped()
            print_fn(f"[{index}/{len(jobs)}] {run}, seed {seed}: {record['status']} before, kept")
        records[(run, seed)] = record
    results = _results(experiment, scale, n_seeds, out, records)
    _write_outputs(experiment, results, out)
    print_fn(f"{experiment.name} ({scale}): {_verdict_counts(results)}; report: {out / REPORT_MD}")
    return results


def _claim_folder(out: Path, name: str, scale: str) -> None:
    marker = out / MARKER
    if marker.exists():
        held = json.loads(marker.read_text(encoding="utf-8"))
        if (held.get("experiment"), held.get("scale")) != (name, scale):
            raise ExperimentError(
                f"{out} holds the results of {held.get('experiment')} at scale {held.get('scale')}; "
                f"choose another --out for {name} at scale {scale} (default: {default_out(name, scale)})")
    elif out.exists() and any(out.iterdir()):
        raise ExperimentError(f"{out} is not empty and holds no experiment; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(marker, {"experiment": name, "scale": scale})


GREY_DATASETS = ("fashion-mnist", "mnist")


def _colour_missing(experiment: Experiment, run: str, settings: dict[str, Any]) -> str:
    """Why ``run`` cannot mean anything on this data set ('' when it can)."""
    if run not in experiment.needs_colour:
        return ""
    dataset = str(settings.get("dataset", ""))
    if dataset.strip().lower().replace("_", "-") in GREY_DATASETS:
        return (f"needs colour images and {dataset} is grey; run it with --dataset cifar10 or a colour "
                "image folder")
    return ""


def _finished(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded outcome of a run that ended with these settings, else None (to run or to resume)."""
    status = run_dir / RUN_STATUS
    if not status.exists():
        return None
    record = json.loads(status.read_text(encoding="utf-8"))
    if record.get("settings") != json.loads(json.dumps(settings)):
        raise ExperimentError(f"{run_dir} was run with other settings than this experiment now asks for; "
                              f"remove {run_dir} to run it again, or choose another --out")
    return record


def _run_one(experiment: Experiment, run: str, settings: dict[str, Any], run_dir: Path,
             print_fn: Callable[[str], None]) -> dict[str, Any]:
    from ..experiment import train
    from ..training.loop import NonFiniteLossError

    resume = (run_dir / "last").exists()
    config = {**settings, "out": str(run_dir), "resume": resume, "overwrite": not resume,
              "progress": False}
    record: dict[str, Any] = {"run": run, "seed": settings["seed"], "settings": settings, "evals": {}}
    try:
        record["history"] = train(config)
        record["status"] = "done"
        record["evals"] = {view: _evaluate(run_dir, view) for view in experiment.evals.get(run, ())}
    except NonFiniteLossError as error:
        record.update(status="diverged", error=str(error), history=_logged_history(run_dir))
    except ClassicnetsError as error:
        record.update(status="failed", error=str(error), history=_logged_history(run_dir))
    if record["status"] != "done":
        print_fn(f"  {run}, seed {settings['seed']} {record['status']}: {record['error']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / RUN_STATUS, record)
    return record


def _evaluate(run_dir: Path, view: str) -> dict[str, float]:
    """Top-1 and top-5 of the run's last weights with a test-time view (none, flip, ten-crop)."""
    from ..inference import evaluate

    result = evaluate(run_dir / "last", tta=view)
    return {"acc": result.top1, "top5": result.top5}


def _logged_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_JSONL
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class _Clock:
    """Time left, from the runs finished in this invocation (runs of one experiment cost alike)."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.seconds = total, 0, 0.0

    def done(self, seconds: float) -> None:
        self.finished += 1
        self.seconds += seconds

    def skipped(self) -> None:
        self.total -= 1

    def left(self) -> str:
        elapsed = f"{self.seconds / 60:.0f} min so far"
        if not self.finished:
            return "time left unknown until the first run ends"
        remaining = (self.total - self.finished) * self.seconds / self.finished
        return f"{elapsed}, about {remaining / 60:.0f} min left"


def _results(experiment: Experiment, scale: str, n_seeds: int, out: Path,
             records: dict[tuple[str, int], dict[str, Any]],
             pending: list[tuple[str, int]] = ()) -> dict[str, Any]:
    """The results of the runs in ``records``; ``pending`` names the runs still to come (the claims that
    need them are judged on the seeds that have finished, or say "no data")."""
    seeds = list(range(n_seeds))
    judged = []
    for claim in experiment.claims:
        scaled = claim.for_scale(scale)
        entry = {"id": claim.id, "claim": scaled.claim, "source": claim.source, "reference": scaled.reference,
                 "metric": scaled.metric, "rule": scaled.rule,
                 "rule_text": claimlib.rule_text(scaled.rule, scaled.reference), "note": scaled.note}
        if scale not in claim.scales:
            entry.update(verdict=claimlib.NOT_AT_SCALE, mean=None, std=None, n=0,
                         judged_at=list(claim.scales))
        else:
            m = claimlib.measure(scaled.metric, records, seeds)
            entry.update(verdict=claimlib.verdict(scaled.rule, scaled.reference, m), mean=_num(m.mean),
                         std=_num(m.std), n=m.n, values=m.values, seeds=m.seeds,
                         lower_bounds=sorted(m.bounds),
                         missing={str(k): v for k, v in m.missing.items()})
        judged.append(entry)
    chosen = experiment.scale(scale)
    order = list(experiment.runs)
    return {
        "experiment": experiment.name, "title": experiment.title, "source": experiment.source,
        "scale": scale, "scale_note": chosen.note, "seeds": n_seeds, "machine": machine(),
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "command": f"classicnets reproduce {experiment.name} --scale {scale}"
                   + ("" if out == default_out(experiment.name, scale) else f" --out {out}")
                   + (f" --seeds {n_seeds}" if n_seeds != chosen.seeds else ""),
        "base": {**experiment.base, **chosen.base},
        "runs": [records[key] for key in sorted(records, key=lambda k: (order.index(k[0]), k[1]))],
        "claims": judged,
        "pending": [{"run": run, "seed": seed} for run, seed in pending],
    }


def _num(value: float) -> float | None:
    return None if value != value else value  # NaN (no data) as null in JSON


def _verdict_counts(results: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for claim in results["claims"]:
        counts[claim["verdict"]] = counts.get(claim["verdict"], 0) + 1
    return ", ".join(f"{n} {v}" for v, n in counts.items())


def _write_outputs(experiment: Experiment, results: dict[str, Any], out: Path) -> None:
    from .report import write_plots, write_report

    _write_json(out / RESULTS_JSON, results)
    figures = write_plots(experiment, results, out)
    write_report(results, out / REPORT_MD, figures)


def _write_json(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, default=str) + "\n")


def machine() -> str:
    """The CPU model and core count, and the GPU when one is used: every figure names its machine."""
    from ..runtime import cpu_model

    text = f"{cpu_model()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text
