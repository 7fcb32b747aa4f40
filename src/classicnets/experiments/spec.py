"""An experiment as data: its runs, its scales and its claims, read from a YAML file shipped in the package.

    name: d2l-alexnet
    title: ...                     # one line for `classicnets reproduce --list`
    base: {recipe: d2l}            # TrainConfig fields every run starts from
    runs:                          # each run: the fields it changes from base
      alexnet-224: {epochs: 20}
    scales:                        # full (the source's settings), cpu, smoke: what each reduces
      cpu: {note: ..., seeds: 2, base: {subset: 12000}, runs: {alexnet-224: {epochs: 8}}}
    claims:                        # see claims.py for metrics and rules
      - {id: ..., claim: ..., source: ..., reference: 0.884, metric: {...}, rule: {...}}

Settings resolve as: the experiment's base < the run's < the scale's base < the scale's for that run <
the caller's (``dataset``, ``data_dir``): a scale's reductions (epochs, width, images) apply to every run.
``model_options`` mappings merge key by key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from ..errors import ClassicnetsError

SCALES = ("smoke", "cpu", "full")
SPEC_DIR = resources.files("classicnets.experiments") / "specs"


class ExperimentError(ClassicnetsError):
    """An unknown experiment or scale, a malformed spec, or an output folder that holds other results."""


@dataclass(frozen=True)
class Scale:
    name: str
    note: str  # what this scale reduces and why the claims still mean something at it
    seeds: int
    base: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)  # run -> why this scale leaves it out


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    source: str
    reference: Any  # a number, or None where the source states a direction only
    metric: dict[str, Any]
    rule: dict[str, Any]
    scales: tuple[str, ...] = SCALES  # where the claim is judged
    at_scale: dict[str, dict[str, Any]] = field(default_factory=dict)  # claim/metric/rule/reference per scale
    note: str = ""

    def for_scale(self, scale: str) -> Claim:
        """The claim with its overrides for ``scale`` applied."""
        over = self.at_scale.get(scale, {})
        return Claim(self.id, over.get("claim", self.claim), self.source,
                     over.get("reference", self.reference),
                     merge(self.metric, over.get("metric", {})), over.get("rule", self.rule),
                     self.scales, {}, over.get("note", self.note))


@dataclass(frozen=True)
class Figure:
    file: str
    title: str
    key: str  # a history column, or train_error / test_error
    runs: dict[str, str]  # run -> line style ("solid", "dashed", ...)
    ylabel: str = ""
    hline: float | None = None
    log_y: bool = False


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str
    description: str
    base: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    scales: dict[str, Scale]
    claims: tuple[Claim, ...]
    figures: tuple[Figure, ...] = ()
    evals: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run -> test-time views evaluated
    needs_colour: tuple[str, ...] = ()  # runs that mean nothing on grey images (PCA colour noise)

    def scale(self, name: str) -> Scale:
        if name not in self.scales:
            raise ExperimentError(f"{self.name} has no scale {name!r}; choose one of "
                                  f"{', '.join(self.scales)}{_close(name, self.scales)}")
        return self.scales[name]

    def settings(self, run: str, scale: str, **caller: Any) -> dict[str, Any]:
        """The TrainConfig fields of ``run`` at ``scale`` (without seed and out)."""
        chosen = self.scale(scale)
        values: dict[str, Any] = {}
        for layer in (self.base, self.runs[run], chosen.base, chosen.runs.get(run, {}),
                      {k: v for k, v in caller.items() if v is not None}):
            values = merge(values, layer)
        return values


def merge(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """``above`` over ``below``; nested mappings (model_options, metric parts) merge key by key."""
    out = dict(below)
    for key, value in above.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def list_experiments() -> list[str]:
    """The names of the shipped experiments, sorted."""
    return sorted(p.name[:-5] for p in SPEC_DIR.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name: str) -> Experiment:
    """The shipped experiment ``name``; unknown names fail with the close matches."""
    names = list_experiments()
    if name not in names:
        raise ExperimentError(f"unknown experiment {name!r}{_close(name, names)}; "
                              f"`classicnets reproduce --list` lists {len(names)}: {', '.join(names)}")
    text = SPEC_DIR.joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return parse_experiment(yaml.safe_load(text), source=f"{name}.yaml")


def parse_experiment(data: dict[str, Any], source: str = "spec") -> Experiment:
    """An :class:`Experiment` from a parsed YAML mapping, with its references checked."""
    try:
        runs = dict(data["runs"])
        scales = {name: Scale(name=name, note=s["note"].strip(), seeds=int(s.get("seeds", 1)),
                              base=dict(s.get("base") or {}), runs=dict(s.get("runs") or {}),
                              skip=dict(s.get("skip") or {}))
                  for name, s in data["scales"].items()}
        claims = tuple(Claim(id=c["id"], claim=c["claim"].strip(), source=c["source"],
                             reference=c.get("reference"), metric=dict(c["metric"]), rule=dict(c["rule"]),
                             scales=tuple(c.get("scales", SCALES)), at_scale=dict(c.get("at_scale") or {}),
                             note=c.get("note", "").strip())
                       for c in data.get("claims", []))
        figures = tuple(Figure(**f) for f in data.get("figures", []))
        experiment = Experiment(
            name=data["name"], title=data["title"].strip(), source=data["source"].strip(),
            description=data.get("description", "").strip(), base=dict(data.get("base") or {}),
            runs=runs, scales=scales, claims=claims, figures=figures,
            evals={run: tuple(views) for run, views in (data.get("evals") or {}).items()},
            needs_colour=tuple(data.get("needs_colour") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ExperimentError(f"{source} is not a valid experiment spec: {error!r}") from None
    _check_references(experiment, source)
    return experiment


def _check_references(experiment: Experiment, source: str) -> None:
    from .claims import runs_read, validate_rule

    unknown_scales = set(experiment.scales) - set(SCALES)
    if unknown_scales:
        raise ExperimentError(f"{source}: unknown scales {sorted(unknown_scales)}; use {', '.join(SCALES)}")
    for scale in experiment.scales.values():
        stray = (set(scale.runs) | set(scale.skip) | set(experiment.needs_colour)) - set(experiment.runs)
        if stray:
            raise ExperimentError(f"{source}: scale {scale.name} changes unknown runs {sorted(stray)}")
    for claim in experiment.claims:
        for scale in claim.scales:
            scaled = claim.for_scale(scale)
            try:
                validate_rule(scaled.rule, scaled.reference)
            except ValueError as error:
                raise ExperimentError(f"{source}: claim {claim.id}: {error}") from None
            missing = runs_read(scaled.metric) - set(experiment.runs)
            if missing:
                raise ExperimentError(f"{source}: claim {claim.id} reads unknown runs {sorted(missing)}")
    for figure in experiment.figures:
        missing = set(figure.runs) - set(experiment.runs)
        if missing:
            raise ExperimentError(f"{source}: figure {figure.file} draws unknown runs {sorted(missing)}")


def _close(value: str, choices) -> str:
    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
