"""Evaluate, predict with and export a trained checkpoint; and the pictures of a run.

A checkpoint (:mod:`classicnets.checkpoint`) is safetensors weights whose header says which model
they belong to and how its inputs were prepared: model name and options, classes, input channels, image size,
mean/std and dataset. Everything here reads that header (:func:`classicnets.checkpoint.load_model`), so a
checkpoint path is all the three commands need:

    >>> result = classicnets.evaluate("runs/demo", tta="flip")      # top-1, top-5, per class, confusion
    >>> classicnets.predict("runs/demo", ["shoe.jpg"])[0].top[0]    # ('Sneaker', 0.93)
    >>> classicnets.export("runs/demo", format="onnx")              # verified against PyTorch

- evaluate.py: ``evaluate`` on a dataset split, with the evaluation of :mod:`classicnets.evaluation`;
- predict.py: ``predict`` on image files; prepare.py: the model's input from uint8 images;
- export.py: ``export`` to ONNX or TorchScript, checked against PyTorch;
- plots.py: the training curves and the confusion matrix.

This package wires models, data and checkpoints together, like :mod:`classicnets.experiment`; the CLI
commands ``eval``, ``predict`` and ``export`` are thin calls into it.
"""

from ..errors import MissingDependencyError
from .evaluate import (
    EvalResult,
    TTAWarning,
    check_output_path,
    eval_output_dir,
    evaluate,
    tta_mismatch,
    write_eval_outputs,
)
from .export import EXPORT_FORMATS, ExportResult, ExportVerificationError, export
from .plots import plot_confusion, plot_curves
from .predict import ImageInputError, Prediction, predict
from .prepare import eval_transform, prepare_batch

__all__ = [
    "EXPORT_FORMATS",
    "EvalResult",
    "ExportResult",
    "ExportVerificationError",
    "ImageInputError",
    "MissingDependencyError",
    "Prediction",
    "TTAWarning",
    "check_output_path",
    "eval_output_dir",
    "eval_transform",
    "evaluate",
    "export",
    "plot_confusion",
    "plot_curves",
    "predict",
    "prepare_batch",
    "tta_mismatch",
    "write_eval_outputs",
]
