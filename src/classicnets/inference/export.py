"""``classicnets.export``: ONNX or TorchScript files, reloaded and checked against PyTorch."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import LoadedCheckpoint, load_model
from ..errors import ClassicnetsError, ConfigError, MissingDependencyError
from .evaluate import check_output_path

EXPORT_FORMATS = ("onnx", "torchscript")


class ExportVerificationError(ClassicnetsError):
    """An exported model whose outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    """An exported model and how closely it matches PyTorch on the same inputs."""

    path: str
    format: str
    max_abs_diff: float
    logit_scale: float  # the largest |logit| of the check: differences scale with it
    tolerance: float
    bytes: int
    input_shape: tuple[int, ...]  # (batch, C, H, W); the batch dimension is dynamic


def export(
    checkpoint: str | Path | LoadedCheckpoint,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    tolerance: float = 1e-4,
    weights: str | Path | None = None,
) -> ExportResult:
    """Export a checkpoint's model to ONNX or TorchScript, then check it against PyTorch.

    The exported model takes float (N, C, image_size, image_size) input prepared as in training (the
    checkpoint's metadata is stored in the file: ONNX metadata_props, TorchScript extra file
    ``classicnets.json``), with a dynamic batch size. It is reloaded with onnxruntime or ``torch.jit.load``
    and run on a batch size other than the one exported; a max abs difference of the logits above
    ``tolerance`` (times the largest logit when that exceeds 1: float32 rounding grows with the values, and
    untrained deep nets reach logits of 1e5) raises :class:`ExportVerificationError`. ``out`` defaults to
    ``MODEL.onnx`` or ``MODEL.torchscript.pt`` in the run directory (the checkpoint's ``run_dir``). With
    ``weights``, ``checkpoint`` is a model name (see :func:`classicnets.checkpoint.load_model`).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0; got {tolerance}")
    if format == "onnx":
        _require_export_packages()
    loaded = load_model(checkpoint, weights=weights)
    prep = loaded.preprocessing
    suffix = ".onnx" if format == "onnx" else ".torchscript.pt"
    name = f"{loaded.metadata['model']}{suffix}"
    path = Path(out) if out is not None else loaded.run_dir / name
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; pass the file to write, e.g. --out {path / name}")
    check_output_path(path, loaded.source, f"{format} export")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = loaded.model.float().eval()
    shape = (prep.in_channels, prep.image_size, prep.image_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *shape, generator=generator)
    check = torch.randn(3, *shape, generator=generator)  # another batch size proves the dynamic batch
    metadata = {key: json.dumps(value) if not isinstance(value, str) else value
                for key, value in loaded.metadata.items()}

    with torch.inference_mode():
        reference = model(check).numpy()
    if not np.isfinite(reference).all():
        bad = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
        raise ExportVerificationError(
            f"{loaded.source} gives NaN or infinite logits in PyTorch itself ({bad:,} of its weights are NaN "
            "or infinite): the checkpoint is broken, not the export, and no tolerance fixes it. Export "
            "another checkpoint (the run's best/ or an earlier run)")
    if format == "onnx":
        exported = _export_onnx(model, example, path, metadata)
    else:
        exported = _export_torchscript(model, example, path, metadata)
    diff = float(np.max(np.abs(exported(check.numpy()) - reference)))
    scale = float(np.max(np.abs(reference)))
    result = ExportResult(str(path), format, diff, scale, tolerance, path.stat().st_size, (-1, *shape))
    if not diff <= tolerance * max(1.0, scale):  # also catches NaN
        raise ExportVerificationError(
            f"the {format} export {path} differs from PyTorch by up to {diff:.3g} on the same input, "
            f"logits up to {scale:.3g} (tolerance {tolerance:g}"
            f"{f' x {scale:.3g}' if scale > 1 else ''}); the file is kept for inspection, do not deploy it. "
            "Report this with the model name, or raise --tolerance if the difference is acceptable"
        )
    return result


def _require_export_packages() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed; install them with: pip install 'classicnets[export]'"
        )


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]):
    import onnx
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    with _quiet_onnx_exporter():
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=f"classicnets.{key}", value=value)
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.astype(np.float32)})[0]


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence the exporter's progress lines and its notes about torchvision ops (not used here)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]):
    # torch.jit warns that it is deprecated in favour of torch.export; it is still what C++ and mobile
    # runtimes load, and what this format promises, so the notice is silenced here. Its TracerWarnings come
    # from the models' input-shape check, which compares channels and H, W: constants of the export.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"classicnets.json": json.dumps(metadata)})
        reloaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reloaded(torch.from_numpy(x)).numpy()

    return run
