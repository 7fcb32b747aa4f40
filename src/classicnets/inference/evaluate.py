"""``classicnets.evaluate``: top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on a
dataset split, by the one evaluation of :mod:`classicnets.evaluation` (the Trainer's, too)."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import LoadedCheckpoint, load_model
from ..errors import ClassicnetsWarning, ConfigError
from ..evaluation import EvalViews, check_tta, evaluate_batches
from ..runtime import resolve_device, reused_host_memory
from .plots import plot_confusion
from .prepare import eval_transform


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
    checkpoint: str | Path | LoadedCheckpoint,
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
    out: str | Path | None = "auto",
    download: bool = True,
    out_dir: str | Path | None = None,
    weights: str | Path | None = None,
) -> EvalResult:
    """Top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on a dataset split.

    The dataset and preprocessing come from the checkpoint's header; ``dataset``/``data_dir``/``split``
    override where the images come from (their classes must be the checkpoint's). A run trained on an
    image folder is evaluated on its val/ (or test/) folder, decoded by DataLoader workers and
    centre-cropped as the trainer's test loader did. ``tta`` is ``none``,
    ``flip`` or ``ten-crop``; ``bf16`` runs under bfloat16 autocast (about 2-3x faster on CPUs with AMX).
    ``limit`` evaluates the first N images only.

    Like ``classicnets eval``, it writes ``metrics.json`` and ``confusion.png`` (paths in ``result.files``):
    by default (``out="auto"``) into the run directory's ``eval-SPLIT[-TTA]/``, else into the folder
    ``out``; ``out=None`` writes nothing. (``out_dir`` is the older name of ``out``.) A ``tta`` whose views
    the run's training augmentation never showed warns with :class:`TTAWarning`.
    With ``weights``, ``checkpoint`` is a model name (see :func:`classicnets.checkpoint.load_model`); a bare
    state_dict names no classes, so the dataset's are used when their number matches. On the CPU the pass
    keeps freed host memory for the next batch and releases it at the end: the host-memory policy of
    :mod:`classicnets.runtime`.
    """
    check_tta(tta)
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1; got {value}")
    loaded = load_model(checkpoint, weights=weights)
    warn_tta(loaded, tta)
    out = out_dir if out_dir is not None else out
    folder = None if out is None else eval_output_dir(loaded, split, tta) if str(out) == "auto" else Path(out)
    if folder is not None:
        check_output_path(folder / "metrics.json", loaded.source, "evaluation results")
    dataset = dataset or loaded.metadata.get("dataset")
    if not dataset:
        raise ConfigError(f"{loaded.source} does not name its dataset; pass --dataset")
    if loaded.classes_assumed:
        loaded.metadata["classes"] = _dataset_classes(loaded, dataset, split, data_dir, download)
    run_device = resolve_device(device)
    model = _inference_model(loaded.model, run_device, channels_last)
    batches = eval_batches(loaded, dataset, split, data_dir, download, limit, tta=tta,
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
    if folder is not None:
        result.files = write_eval_outputs(result, folder)
    return result


def eval_output_dir(loaded: LoadedCheckpoint, split: str, tta: str) -> Path:
    """Where evaluation results go unless told: RUN_DIR/eval-SPLIT, with -TTA when TTA is on."""
    return loaded.run_dir / f"eval-{split}{'' if tta == 'none' else '-' + tta}"


def check_output_path(out: Path, source: Path, what: str) -> None:
    """Refuse to write ``out`` onto the checkpoint ``source`` it was made from, or into any checkpoint
    folder: best/ and last/ share their files through hard links, and every save replaces the folder
    whole, so a file written there either destroys a checkpoint or is lost at the next save."""
    from ..checkpoint import MODEL_FILE, run_dir_of

    out = out.resolve()
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; pass the path of the {what} file to write")
    same_file = out == source.resolve() or (out.exists() and source.exists() and out.samefile(source))
    folder = out.parent
    if same_file or (folder / MODEL_FILE).exists():
        raise ConfigError(
            f"refusing to write the {what} to {out}: "
            + ("that is the checkpoint being read" if same_file else f"{folder} is a checkpoint folder")
            + f" and it would be {'overwritten' if same_file else 'damaged or lost at the next save'}. "
            f"Choose another path, such as {run_dir_of(source) / out.name}"
        )


# The training augmentations whose images include each TTA's views: mirrors for flip, crops and mirrors for
# ten-crop (data.augment's names).
TTA_NEEDS = {"flip": ("flip", "crop-flip", "resized-crop-flip", "paper"),
             "ten-crop": ("crop-flip", "resized-crop-flip", "paper")}


def tta_mismatch(loaded: LoadedCheckpoint, tta: str) -> str | None:
    """Why ``tta`` may make this checkpoint's results worse, or None: views the training never showed it.

    The run's augmentation is read from the config.json of its run directory (absent for a bare file).
    """
    config = loaded.run_dir / "config.json"
    if tta not in TTA_NEEDS or not config.is_file():
        return None
    try:
        augment = json.loads(config.read_text(encoding="utf-8")).get("augment", "none")
    except (OSError, ValueError):
        return None
    if augment in TTA_NEEDS[tta]:
        return None
    views = "mirrored images" if tta == "flip" else "corner crops and mirrored images"
    return (f"TTA {tta} averages over {views}, but {config.parent} was trained with augment={augment!r}, "
            f"which never showed it such views: TTA may lower its accuracy. Compare with --tta none; TTA "
            f"helps runs trained with augment {' or '.join(TTA_NEEDS[tta])}")


def warn_tta(loaded: LoadedCheckpoint, tta: str) -> None:
    """Warn with :class:`TTAWarning` when :func:`tta_mismatch` finds a reason."""
    message = tta_mismatch(loaded, tta)
    if message:
        warnings.warn(message, TTAWarning, stacklevel=3)


class TTAWarning(ClassicnetsWarning):
    """A test-time augmentation that the checkpoint's training never showed it (results may get worse)."""


def _dataset_classes(loaded: LoadedCheckpoint, dataset: str, split: str, data_dir,
                     download: bool) -> list[str]:
    """The class names of the dataset, for weights that carry none; their number must be the model's."""
    from ..data import formats, image_folder_root, load_dataset
    from ..errors import DatasetError

    folder = image_folder_root(dataset, data_dir)
    if folder is not None:
        names = ("train",) if split == "train" else ("val", "test")
        split_dir = next((folder / n for n in names if (folder / n).is_dir()), folder / names[0])
        classes = formats.scan_image_folder(split_dir, on_bad="skip").classes
    else:
        classes = list(load_dataset(dataset, split, data_dir=data_dir, download=download).classes)
    if len(classes) != len(loaded.classes):
        raise DatasetError(f"{dataset} has {len(classes)} classes but the weights in {loaded.source} have "
                           f"{len(loaded.classes)} outputs; evaluate on a dataset with as many classes "
                           "(in the order the model was trained with)")
    return classes


def eval_batches(loaded: LoadedCheckpoint, dataset: str, split: str, data_dir, download: bool,
                  limit: int | None, *, tta: str, batch_size: int, device: torch.device,
                  channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model inputs and labels of the split, prepared as the trainer's test loader prepared them: an
    image folder streams through DataLoader workers, a named data set is resized on the device."""
    from ..data import folder_eval_loader, image_folder_root
    from ..errors import DatasetError

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
    from ..data import load_dataset
    from ..errors import DatasetError

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
    if count == 0:  # every image was skipped as unreadable: no accuracy to report
        from ..errors import DatasetError

        raise DatasetError("no image could be evaluated (each was skipped as unreadable; see the warnings "
                           "above); fix or replace the images")
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
