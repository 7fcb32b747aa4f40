"""`classicnets reproduce`: the book's and the paper's claims as experiments with verdicts.

    >>> import classicnets
    >>> classicnets.experiments.list_experiments()
    ['d2l-alexnet', 'd2l-modern-cnns', 'paper-ablations', 'paper-relu-tanh']
    >>> results = classicnets.reproduce("d2l-alexnet", scale="smoke", out="runs/smoke")
    >>> [(c["id"], c["verdict"]) for c in results["claims"]]

Each experiment is a YAML file in ``specs/``: its runs (a recipe plus overrides), scales and claims.
"""

from .runner import reproduce
from .spec import SCALES, Experiment, ExperimentError, list_experiments, load_experiment

__all__ = ["SCALES", "Experiment", "ExperimentError", "list_experiments", "load_experiment", "reproduce"]
