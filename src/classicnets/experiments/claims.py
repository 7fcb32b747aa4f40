"""How a claim is measured from the runs, and the rule that turns the measurement into a verdict.

A metric is a small mapping, read once per seed (runs pair up by seed, so a difference is taken between
runs that share their data order and initial draw where the nets allow it):

- ``{read: at, run: R, key: test_acc, epoch: 10}``: a history column at an epoch (an int, ``last``,
  ``half`` or ``first``); ``key`` may also be ``train_error`` or ``test_error`` (1 - the accuracy);
- ``{read: best, run: R, key: test_acc}``: the best value over the epochs;
- ``{read: epochs_to, run: R, key: train_error, below: 0.1}``: the (linearly interpolated) epoch at which
  the key first crosses the threshold (``below`` or ``above``); ``seconds_to`` counts training seconds.
  A run that never crosses counts as its length: a lower bound, marked in the report;
- ``{read: eval, run: R, view: ten-crop, key: acc}``: a test-time evaluation the runner made after training;
- ``{read: diff | ratio, a: METRIC, b: METRIC}``: a - b or a / b, per seed.

Rules, with u = 2 x the standard error of the mean over seeds (0 for one seed):

- ``within`` (``tolerance``): reproduced if |mean - reference| <= tolerance; not reproduced if it is off by
  more than tolerance + u; inconclusive between the two;
- ``positive`` / ``negative``: the effect has the claimed sign: reproduced if mean - u > 0 (mean + u < 0),
  not reproduced if the opposite sign is as clear, inconclusive when the seeds' spread covers 0 or only one
  seed ran;
- ``at_least`` / ``at_most`` (``value``): reproduced if mean - u >= value (mean + u <= value), not
  reproduced if mean + u < value (mean - u > value), inconclusive between.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_AT_SCALE, NO_DATA = "not tested at this scale", "no data"
RULES = ("within", "positive", "negative", "at_least", "at_most")

RunKey = tuple[str, int]  # (run name, seed)


@dataclass
class Reading:
    """A metric read for one seed; ``bounds`` names runs that never crossed a threshold."""

    value: float
    bounds: set[str] = field(default_factory=set)


class MissingRun(Exception):
    """The metric needs a run that did not finish (failed, diverged or not run)."""


def runs_read(metric: Mapping[str, Any]) -> set[str]:
    """The run names a metric reads."""
    if metric["read"] in ("diff", "ratio"):
        return runs_read(metric["a"]) | runs_read(metric["b"])
    return {metric["run"]}


def read(metric: Mapping[str, Any], runs: Mapping[RunKey, Mapping[str, Any]], seed: int) -> Reading:
    """The metric's value for ``seed``; raises :class:`MissingRun` when a run it needs did not finish."""
    kind = metric["read"]
    if kind in ("diff", "ratio"):
        a, b = read(metric["a"], runs, seed), read(metric["b"], runs, seed)
        value = a.value - b.value if kind == "diff" else _ratio(a.value, b.value)
        return Reading(value, a.bounds | b.bounds)
    record = runs.get((metric["run"], seed))
    if not record or record.get("status") != "done":
        raise MissingRun(metric["run"])
    history = record["history"]
    if kind == "at":
        return Reading(column(history, metric["key"])[_epoch_index(metric.get("epoch", "last"), history)])
    if kind == "best":
        values = column(history, metric["key"])
        return Reading(min(values) if metric["key"].endswith("error") else max(values))
    if kind in ("epochs_to", "seconds_to"):
        return _time_to(metric, history, kind)
    if kind == "eval":
        return Reading(float(record["evals"][metric["view"]][metric.get("key", "acc")]))
    raise ValueError(f"unknown metric kind {kind!r}")


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def column(history: list[Mapping[str, Any]], key: str) -> list[float]:
    if key in ("train_error", "test_error"):
        return [1.0 - r[key.replace("error", "acc")] for r in history]
    return [float(r[key]) for r in history]


def _epoch_index(epoch: int | str, history: list) -> int:
    n = len(history)
    named = {"last": n - 1, "first": 0, "half": n // 2 - 1}
    index = named.get(epoch) if isinstance(epoch, str) else epoch - 1
    if index is None or not 0 <= index < n:
        raise MissingRun(f"epoch {epoch} of a run with {n} epochs")
    return index


def _time_to(metric: Mapping[str, Any], history: list[Mapping[str, Any]], kind: str) -> Reading:
    values = column(history, metric["key"])
    below = "below" in metric
    threshold = float(metric["below"] if below else metric["above"])
    # the x axis: epochs, or cumulative training seconds at the end of each epoch
    ends = list(range(1, len(history) + 1)) if kind == "epochs_to" else _cumulative(history)
    starts = [0.0, *ends[:-1]]
    previous = None
    for start, end, value in zip(starts, ends, values, strict=True):
        crossed = value <= threshold if below else value >= threshold
        if crossed:
            if previous is None:  # crossed within the first epoch: no earlier point to interpolate from
                return Reading(float(end))
            fraction = (previous - threshold) / (previous - value) if previous != value else 1.0
            return Reading(start + fraction * (end - start))
        previous = value
    return Reading(float(ends[-1]), {metric["run"]})  # never crossed: the run's length is a lower bound


def _cumulative(history: list[Mapping[str, Any]]) -> list[float]:
    total, out = 0.0, []
    for record in history:
        total += float(record["train_time"])
        out.append(total)
    return out


@dataclass
class Measurement:
    values: list[float]
    seeds: list[int]
    bounds: set[str]
    missing: dict[int, str]  # seed -> what was missing

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def margin(self) -> float:
        """Two standard errors of the mean: the seeds' spread the rules allow for."""
        return 2 * self.std / math.sqrt(self.n) if self.n > 1 else 0.0


def measure(metric: Mapping[str, Any], runs: Mapping[RunKey, Mapping[str, Any]],
            seeds: list[int]) -> Measurement:
    """The metric over every seed whose runs finished."""
    m = Measurement([], [], set(), {})
    for seed in seeds:
        try:
            reading = read(metric, runs, seed)
        except MissingRun as error:
            m.missing[seed] = str(error)
            continue
        m.values.append(reading.value)
        m.seeds.append(seed)
        m.bounds |= reading.bounds
    return m


def verdict(rule: Mapping[str, Any], reference: float | None, m: Measurement) -> str:
    """reproduced, not reproduced or inconclusive, as :func:`rule_text` states for ``rule``."""
    if m.n == 0:
        return NO_DATA
    kind, mean, u = rule["kind"], m.mean, m.margin
    if kind == "within":
        off, tolerance = abs(mean - reference), float(rule["tolerance"])
        return REPRODUCED if off <= tolerance else NOT_REPRODUCED if off - u > tolerance else INCONCLUSIVE
    if kind in ("positive", "negative"):
        if m.n < 2:
            return INCONCLUSIVE
        signed = mean if kind == "positive" else -mean
        return REPRODUCED if signed - u > 0 else NOT_REPRODUCED if signed + u < 0 else INCONCLUSIVE
    if kind in ("at_least", "at_most"):
        value = float(rule["value"])
        low, high = mean - u, mean + u
        if kind == "at_least":
            return REPRODUCED if low >= value else NOT_REPRODUCED if high < value else INCONCLUSIVE
        return REPRODUCED if high <= value else NOT_REPRODUCED if low > value else INCONCLUSIVE
    raise ValueError(f"unknown rule {kind!r}; rules are {', '.join(RULES)}")


def rule_text(rule: Mapping[str, Any], reference: float | None) -> str:
    """The rule in words, for the report (u: twice the standard error over seeds)."""
    kind = rule["kind"]
    if kind == "within":
        t = rule["tolerance"]
        return (f"reproduced if the mean is within {t:g} of {reference:g}; not reproduced if off by more "
                f"than {t:g} + u; else inconclusive")
    if kind in ("positive", "negative"):
        sign = ">" if kind == "positive" else "<"
        return (f"reproduced if mean {sign} 0 beyond u (>= 2 seeds); not reproduced if the opposite sign is "
                "as clear; else inconclusive")
    value = rule["value"]
    op, opposite = (">=", "<") if kind == "at_least" else ("<=", ">")
    return f"reproduced if mean {op} {value:g} beyond u; not reproduced if mean {opposite} {value:g} beyond u"


def validate_rule(rule: Mapping[str, Any], reference: float | None) -> None:
    kind = rule.get("kind")
    if kind not in RULES:
        raise ValueError(f"unknown rule {kind!r}; rules are {', '.join(RULES)}")
    if kind == "within" and (reference is None or "tolerance" not in rule):
        raise ValueError("a within rule needs a reference and a tolerance")
    if kind in ("at_least", "at_most") and "value" not in rule:
        raise ValueError(f"an {kind} rule needs a value")
