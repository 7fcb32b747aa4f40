"""Evaluate, predict with and export a trained checkpoint.

A checkpoint (:mod:`classicnets.checkpoint`) is safetensors weights whose header says which model
they belong to and how its inputs were prepared: model name and options, classes, input channels, image size,
mean/std and dataset. Everything here reads that header, so a checkpoint path is all the three commands need:

    >>> result = classicnets.evaluate("runs/demo", tta="flip")      # top-1, top-5, per class, confusion
    >>> classicnets.predict("runs/demo", ["shoe.jpg"])[0].top[0]    # ('Sneaker', 0.93)
    >>> classicnets.export("runs/demo", format="onnx")              # verified against PyTorch

Loading never executes code (safetensors only), and weights that do not fit the model the header names are
refused with the first mismatches, so a checkpoint of another model can never run silently.

This module wires models, data and checkpoints together, like :mod:`classicnets.experiment`; the CLI commands
``eval``, ``predict`` and ``export`` are thin calls into it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import LoadedCheckpoint, Preprocessing, load_model
from .errors import ClassicnetsError, ConfigError
from .evaluation import EvalViews, check_tta, evaluate_batches, scores
from .runtime import resolve_device, reused_host_memory

EXPORT_FORMATS = ("onnx", "torchscript")
# ITU-R 601 luma, the weights PIL's convert("L") uses, to feed colour images to a grey model.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class MissingDependencyError(ClassicnetsError, ImportError):
    """An optional package (onnx, onnxruntime, onnxscript) that a command needs is not installed."""


class ExportVerificationError(ClassicnetsError):
    """An exported model whose outputs differ from PyTorch's by more than the tolerance."""


class ImageInputError(ClassicnetsError, ValueError):
    """An image file that is missing or cannot be decoded."""


# ------------------------------------------------------------------------------------- preprocessing


def prepare_batch(images: torch.Tensor, prep: Preprocessing, *, uncropped: bool = False,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> the float input the model was trained on, on the images' device.

    Channels are converted to the model's (grey repeated, colour to luma), then the data layer's test
    transform runs, the one the trainer evaluates with: resize to the image size, scale to [0, 1],
    normalise with the checkpoint's mean/std when it has them. ``uncropped`` resizes to the paper's
    pre-crop size instead (256 for 224), for ten-crop TTA.
    """
    return eval_transform(prep, uncropped=uncropped, channels_last=channels_last)(images)


def eval_transform(prep: Preprocessing, *, uncropped: bool = False,
                   channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`prepare_batch` as one transform for many batches: it keeps its constants (resize matrices,
    mean/std) on the device, where building them for every batch would wait on a copy each time."""
    from .data.augment import BatchTransform

    transform = BatchTransform(image_size=prep.image_size, train=False, mean=prep.mean, std=prep.std,
                               channels_last=channels_last, uncropped=uncropped)
    return lambda images: transform(_match_channels(images, prep.in_channels))


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    found = images.shape[1]
    if found == channels:
        return images
    if found == 1:
        return images.expand(-1, channels, -1, -1)
    if found == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, device=images.device).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round_().to(torch.uint8)
    raise ConfigError(f"images have {found} channels and the model takes {channels}; only grey <-> RGB "
                      "conversions are defined")


# ---------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Accuracy of a checkpoint on a dataset split. ``confusion[i][j]``: images of class i predicted as j."""

    top1: float
    top5: float
    top_k: int  # 5, or the number of classes when there are fewer
    count: int
    classes: list[str]
    per_class: dict[str, float | None]  # None: no image of that class was evaluated
    confusion: list[list[int]]
    settings: dict[str, Any]
    seconds: float  # the inference pass alone (not loading the checkpoint and the dataset)
    images_per_second: float
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    tta: str = "none",
    batch_size: int = 500,
    device: str | torch.device = "auto",
    bf16: bool = False,
    channels_last: bool = True,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    download: bool = True,
) -> EvalResult:
    """Top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on a dataset split.

    The dataset and preprocessing come from the checkpoint's header; ``dataset``/``data_dir``/``split``
    override where the images come from (their classes must be the checkpoint's). A run trained on an
    image folder is evaluated on its val/ (or test/) folder, decoded by DataLoader workers and
    centre-cropped as the trainer's test loader did. ``tta`` is ``none``,
    ``flip`` or ``ten-crop``; ``bf16`` runs under bfloat16 autocast (about 2-3x faster on CPUs with AMX).
    ``limit`` evaluates the first N images only. With ``out_dir``, writes ``metrics.json`` and
    ``confusion.png`` there. On the CPU the pass keeps freed host memory for the next batch and releases it
    at the end: the host-memory policy of :mod:`classicnets.runtime`.
    """
    check_tta(tta)
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1; got {value}")
    loaded = load_model(checkpoint)
    dataset = dataset or loaded.metadata.get("dataset")
    if not dataset:
        raise ConfigError(f"{loaded.source} does not name its dataset; pass --dataset")
    run_device = resolve_device(device)
    model = _inference_model(loaded.model, run_device, channels_last)
    batches = _eval_batches(loaded, dataset, split, data_dir, download, limit, tta=tta,
                            batch_size=batch_size, device=run_device, channels_last=channels_last)

    start = time.perf_counter()
    # every batch frees and asks for the same large blocks: keep them mapped (runtime.py's policy)
    with reused_host_memory(enabled=run_device.type == "cpu"):
        with torch.inference_mode():
            sums = evaluate_batches(model, batches, device=run_device, bf16=bf16, with_loss=False,
                                    views=EvalViews(tta, loaded.preprocessing.image_size),
                                    num_classes=len(loaded.classes))
        confusion, top_k_hits = sums.confusion_matrix(), sums.hits(5)  # the host reads
    seconds = time.perf_counter() - start

    settings = {"checkpoint": str(loaded.source), "model": loaded.metadata["model"], "dataset": dataset,
                "split": split, "data_dir": None if data_dir is None else str(data_dir), "tta": tta,
                "limit": limit, "batch_size": batch_size, "device": str(run_device), "bf16": bf16,
                "channels_last": channels_last, "image_size": loaded.preprocessing.image_size}
    result = _result(confusion, top_k_hits, loaded.classes, settings, seconds)
    if out_dir is not None:
        result.files = write_eval_outputs(result, Path(out_dir))
    return result


def _eval_batches(loaded: LoadedCheckpoint, dataset: str, split: str, data_dir, download: bool,
                  limit: int | None, *, tta: str, batch_size: int, device: torch.device,
                  channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model inputs and labels of the split, prepared as the trainer's test loader prepared them: an
    image folder streams through DataLoader workers, a named data set is resized on the device."""
    from .data import folder_eval_loader, image_folder_root
    from .errors import DatasetError

    prep = loaded.preprocessing
    folder = image_folder_root(dataset, data_dir)  # the header keeps a folder run's path
    if folder is not None:
        folder = Path(data_dir) if data_dir else folder  # the folder has moved
        if not folder.is_dir():
            raise DatasetError(f"{loaded.source} was trained on the image folder {dataset}, which is not "
                               "there; pass --data-dir with the folder that holds its val/ (or test/) split")
        return iter(folder_eval_loader(folder, split, classes=loaded.classes, image_size=prep.image_size,
                                       batch_size=batch_size, mean=prep.mean, std=prep.std,
                                       uncropped=tta == "ten-crop", channels_last=channels_last,
                                       device=device, limit=limit))
    images, labels = _eval_split(loaded, dataset, split, data_dir, download, limit)
    images, labels = images.to(device), labels.to(device)  # small: Fashion-MNIST's test set is 8 MB
    prepare = eval_transform(prep, uncropped=tta == "ten-crop", channels_last=channels_last)
    return ((prepare(x), y) for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True))


def _eval_split(loaded: LoadedCheckpoint, dataset: str, split: str, data_dir, download: bool,
                limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_dataset
    from .errors import DatasetError

    data = load_dataset(dataset, split, data_dir=data_dir, download=download)
    if list(data.classes) != loaded.classes:
        raise DatasetError(
            f"dataset {dataset!r} ({split}) has classes {list(data.classes)[:5]}... ({len(data.classes)}), "
            f"but {loaded.source} was trained on {loaded.classes[:5]}... ({len(loaded.classes)}); "
            "evaluate on a dataset with the same classes in the same order"
        )
    images, labels = torch.as_tensor(data.images), torch.as_tensor(data.labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _inference_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _result(confusion: torch.Tensor, top_k_hits: int, classes: list[str], settings: dict[str, Any],
            seconds: float) -> EvalResult:
    count = int(confusion.sum())
    per_class_total = confusion.sum(dim=1)
    per_class = (confusion.diagonal().double() / per_class_total.clamp(min=1)).tolist()
    return EvalResult(
        top1=float(confusion.diagonal().sum()) / count,
        top5=top_k_hits / count,
        top_k=min(5, len(classes)),
        count=count,
        classes=list(classes),
        # a class absent from the evaluated images has no accuracy (NaN is not valid JSON)
        per_class={name: (acc if total else None) for name, acc, total
                   in zip(classes, per_class, per_class_total.tolist(), strict=True)},
        confusion=confusion.tolist(),
        settings=settings,
        seconds=seconds,
        images_per_second=count / seconds if seconds > 0 else math.inf,
    )


def write_eval_outputs(result: EvalResult, out_dir: Path) -> dict[str, str]:
    """``metrics.json`` (the whole result) and ``confusion.png`` (row-normalised, class names on the axes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out_dir / "metrics.json"), "png": str(out_dir / "confusion.png")}
    settings = result.settings
    tta = "" if settings["tta"] == "none" else f", TTA {settings['tta']}"
    title = f"{settings['model']} on {settings['dataset']} {settings['split']}{tta}: top-1 {result.top1:.2%}"
    plot_confusion(np.asarray(result.confusion), result.classes, Path(files["png"]), title=title)
    payload = result.to_dict()
    payload["files"] = files
    Path(files["json"]).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return files


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    """A confusion-matrix heat map: rows are true classes, columns predictions, cells the share of the row."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and the user's backend) alone.
    from matplotlib.figure import Figure

    rows = confusion.sum(axis=1, keepdims=True)
    shares = confusion / np.maximum(rows, 1)
    n = len(classes)
    side = max(5.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8 if n > 10 else 9)
    ax.set_yticks(range(n), classes, fontsize=8 if n > 10 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    if n <= 20:  # counts stay legible up to about 20 classes
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """The top classes for one image, most probable first, as (class name, probability)."""

    source: str
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top[0][0]


def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path | Any],
    *,
    top_k: int = 5,
    tta: str = "none",
    invert: bool = False,
    device: str | torch.device = "auto",
) -> list[Prediction]:
    """The ``top_k`` classes with probabilities for each image (paths or PIL images), in one batch.

    Any size, grey or colour: each image is converted to the model's channels, centre-cropped to a square
    (the paper's test crop; training images are square) and resized and normalised as in training.
    ``invert`` turns dark-on-light photos into the light-on-dark look of Fashion-MNIST and MNIST.
    """
    check_tta(tta)
    if not images:
        raise ConfigError("no images given; pass one or more image files")
    loaded = load_model(checkpoint)
    prep = loaded.preprocessing
    run_device = resolve_device(device)
    model = loaded.model.to(run_device)
    prepare = eval_transform(prep, uncropped=tta == "ten-crop")
    with torch.inference_mode():
        x = torch.cat([prepare(_square_image(image, prep.in_channels, invert)[None].to(run_device))
                       for image in images])
        probabilities = scores(model, x, tta, prep.image_size)
        if tta == "none":
            probabilities = probabilities.softmax(dim=1)
        values, indices = probabilities.topk(min(top_k, len(loaded.classes)), dim=1)
    classes = loaded.classes
    return [Prediction(_source_name(image), [(classes[i], p) for i, p in zip(row_i, row_p, strict=True)])
            for image, row_i, row_p in zip(images, indices.tolist(), values.tolist(), strict=True)]


def _square_image(image: str | Path | Any, channels: int, invert: bool) -> torch.Tensor:
    """An image file or PIL image as uint8 (channels, S, S): its centred square, before any resizing."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                pil = opened
        except FileNotFoundError:
            raise ImageInputError(f"image {image} does not exist") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ImageInputError(f"{image} is not an image PIL can read ({error}); "
                                  "pass a PNG, JPEG, BMP, GIF or TIFF file") from None
    else:
        pil = image
    pil = ImageOps.exif_transpose(pil)  # phone photos store their rotation in EXIF
    pil = pil.convert("L" if channels == 1 else "RGB")
    if invert:
        pil = ImageOps.invert(pil)
    array = np.asarray(pil, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    height, width = tensor.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return tensor[:, top:top + side, left:left + side]


def _source_name(image: Any) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"


# ------------------------------------------------------------------------------------------- export


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
    checkpoint: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export a checkpoint's model to ONNX or TorchScript, then check it against PyTorch.

    The exported model takes float (N, C, image_size, image_size) input prepared as in training (the
    checkpoint's metadata is stored in the file: ONNX metadata_props, TorchScript extra file
    ``classicnets.json``), with a dynamic batch size. It is reloaded with onnxruntime or ``torch.jit.load``
    and run on a batch size other than the one exported; a max abs difference of the logits above
    ``tolerance`` (times the largest logit when that exceeds 1: float32 rounding grows with the values, and
    untrained deep nets reach logits of 1e5) raises :class:`ExportVerificationError`. ``out`` defaults to
    ``MODEL.onnx`` or ``MODEL.torchscript.pt`` in the run directory (the checkpoint's ``run_dir``).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be >= 0; got {tolerance}")
    if format == "onnx":
        _require_export_packages()
    loaded = load_model(checkpoint)
    prep = loaded.preprocessing
    suffix = ".onnx" if format == "onnx" else ".torchscript.pt"
    name = f"{loaded.metadata['model']}{suffix}"
    path = Path(out) if out is not None else loaded.run_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    model = loaded.model.float().eval()
    shape = (prep.in_channels, prep.image_size, prep.image_size)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *shape, generator=generator)
    check = torch.randn(3, *shape, generator=generator)  # another batch size proves the dynamic batch
    metadata = {key: json.dumps(value) if not isinstance(value, str) else value
                for key, value in loaded.metadata.items()}

    if format == "onnx":
        exported = _export_onnx(model, example, path, metadata)
    else:
        exported = _export_torchscript(model, example, path, metadata)
    with torch.inference_mode():
        reference = model(check).numpy()
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
