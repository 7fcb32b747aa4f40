"""Checkpoints: the format, atomic saves, loads that never execute code, the state for an exact resume,
and :func:`load_model` (a checkpoint path in, the model it was saved from out).

A run directory holds two checkpoint directories, ``last/`` (after every epoch) and ``best/``
(the epoch with the best test accuracy so far)::

    OUT/
      last/  model.safetensors    weights; the header's metadata says what they are (see model_metadata)
             trainer.safetensors  optimizer and scheduler tensors, RNG states
             trainer.json         everything else: epoch, step, config, best metric, history, RNG states
      best/  (the same three files)

Everything is safetensors + JSON: a checkpoint is data, never a pickle, so loading one cannot run code.

The header of ``model.safetensors`` (:func:`model_metadata`) says which model the weights belong to and how
its inputs were prepared: model name and options, classes, input channels, image size, mean/std, dataset.
:func:`load_model` reads it, rebuilds that model and refuses weights that do not fit it, listing the first
mismatches, so a checkpoint of another model can never run silently.

Saving is atomic: the files are written into a fresh temporary directory next to the target, fsynced,
then renamed into place. A process killed at any moment leaves the previous checkpoint loadable; the
only window where ``last/`` is briefly absent (between moving the old one aside and the new one in) is
healed by :func:`resolve_checkpoint_dir`, which falls back to the moved-aside copy.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, ClassicnetsError, refuse_url

MODEL_FILE = "model.safetensors"
TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_STATE_FILE = "trainer.json"
LAST, BEST = "last", "best"
FORMAT_VERSION = 1

# Tests set this to pause or crash between the files of a save (proving the save is atomic).
# It receives the path of the file just written into the temporary directory.
_after_file_written: Callable[[Path], None] | None = None

_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar"}


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint holding NaN or infinite weights or statistics, or a std that is not positive: a model
    fed by it would answer at random (10% top-1, "nan%" probabilities) without any other sign."""


# ----------------------------------------------------------------------------------------- metadata


def model_metadata(
    *,
    model: str,
    model_options: Mapping[str, Any],
    num_classes: int,
    in_channels: int,
    classes: list[str] | tuple[str, ...],
    image_size: int,
    mean: tuple[float, ...] | list[float] | None,
    std: tuple[float, ...] | list[float] | None,
    dataset: str,
) -> dict[str, str]:
    """The str -> str header of ``model.safetensors``: what a reader needs to rebuild and feed the model.

    ``mean``/``std`` are None when the run did not normalise its inputs (the d2l recipe).
    """
    from . import __version__

    return {
        "format": str(FORMAT_VERSION),
        "model": model,
        "model_options": json.dumps(dict(model_options), sort_keys=True),
        "num_classes": str(int(num_classes)),
        "in_channels": str(int(in_channels)),
        "classes": json.dumps(list(classes)),
        "image_size": str(int(image_size)),
        "mean": json.dumps(None if mean is None else [float(v) for v in mean]),
        "std": json.dumps(None if std is None else [float(v) for v in std]),
        "dataset": dataset,
        "classicnets_version": __version__,
    }


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Metadata with its JSON and integer fields decoded (model_options as a dict, classes as a list...)."""
    decoded: dict[str, Any] = dict(metadata)
    for key in ("model_options", "classes", "mean", "std"):
        if key in decoded:
            decoded[key] = json.loads(decoded[key])
    for key in ("num_classes", "in_channels", "image_size", "format"):
        if key in decoded:
            decoded[key] = int(decoded[key])
    return decoded


REQUIRED_METADATA = ("model", "num_classes", "in_channels", "classes", "image_size")
# Bounds of a header a reader trusts enough to allocate from: far above any real checkpoint, far below
# what would exhaust memory (image_size is TrainConfig's own bound).
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 64


def validate_metadata(metadata: Mapping[str, Any], source: Path | str) -> dict[str, Any]:
    """The header of ``model.safetensors`` decoded and checked, field by field, before anything is built
    or allocated from it; a missing, malformed or out-of-range field raises a CheckpointError naming it.

    The one place that decides what a readable header is: evaluation, prediction, export and resume read
    headers through it.
    """
    from .registry import MAX_IMAGE_SIZE

    if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{source}: its header metadata must map names to strings; the file is corrupt")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{source} is a safetensors file but not a classicnets checkpoint: its header lacks "
            f"{', '.join(missing)} (found keys: {sorted(metadata) or 'none'}). Save weights with "
            "`classicnets train`, or write the header with classicnets.checkpoint.model_metadata()"
        )

    def bad(key: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{source}: its header's {key} is {metadata.get(key)!r}, expected {expected}; "
                               "the file was edited or is corrupt, use a checkpoint written by classicnets")

    def whole(key: str, low: int, high: int) -> int:
        text = metadata[key].strip()
        if not (text.isascii() and text.lstrip("-").isdigit()) or not low <= int(text) <= high:
            raise bad(key, f"a whole number from {low:,} to {high:,}")
        return int(text)

    def json_field(key: str, expected: str) -> Any:
        try:
            return json.loads(metadata[key])
        except (ValueError, RecursionError):
            raise bad(key, expected) from None

    decoded: dict[str, Any] = dict(metadata)
    decoded["format"] = whole("format", 1, 1_000_000) if "format" in metadata else FORMAT_VERSION
    if decoded["format"] > FORMAT_VERSION:
        raise CheckpointError(f"{source} uses checkpoint format {decoded['format']}, newer than this "
                              f"classicnets reads ({FORMAT_VERSION}); upgrade classicnets")
    if not metadata["model"].strip():
        raise bad("model", "a model name")
    decoded["num_classes"] = whole("num_classes", 1, MAX_CLASSES)
    decoded["in_channels"] = whole("in_channels", 1, MAX_IN_CHANNELS)
    decoded["image_size"] = whole("image_size", 1, MAX_IMAGE_SIZE)
    options = json_field("model_options", "a JSON object") if "model_options" in metadata else {}
    if not isinstance(options, dict):
        raise bad("model_options", "a JSON object such as {\"width_mult\": 0.5}")
    decoded["model_options"] = options
    classes = json_field("classes", "a JSON list of class names")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise bad("classes", "a JSON list of class names")
    if len(classes) != decoded["num_classes"]:
        raise CheckpointError(f"{source}: its header lists {len(classes)} class names for "
                              f"num_classes={decoded['num_classes']}; the file is inconsistent")
    decoded["classes"] = classes
    for key in ("mean", "std"):
        words = f"null or a JSON list of {decoded['in_channels']} finite numbers (one per input channel)"
        value = json_field(key, words) if key in metadata else None
        if value is not None and not (
                isinstance(value, list) and len(value) == decoded["in_channels"]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        and (key == "mean" or v > 0) for v in value)):
            raise bad(key, words + (", all positive" if key == "std" else ""))
        decoded[key] = value
    if (decoded["mean"] is None) != (decoded["std"] is None):
        raise CheckpointError(f"{source}: its header has a mean but no std, or a std but no mean; "
                              "the file is inconsistent")
    return decoded


def check_same_model(metadata: Mapping[str, str], *, model: str, model_options: Mapping[str, Any],
                     num_classes: int, in_channels: int, source: Path | str) -> None:
    """Refuse a checkpoint written for another model (name, options, classes or input channels)."""
    found = validate_metadata(metadata, source)
    expected = {"model": model, "model_options": json.loads(json.dumps(dict(model_options))),
                "num_classes": int(num_classes), "in_channels": int(in_channels)}
    wrong = [f"{key} is {found.get(key)!r}, expected {value!r}"
             for key, value in expected.items() if found.get(key) != value]
    if wrong:
        raise CheckpointError(
            f"checkpoint {source} was saved for another model: {'; '.join(wrong)}. "
            "Resume with the same --model and options, or start a new run with another --out."
        )


# ------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    run_dir: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    trainer_state: Mapping[str, Any],
    is_best: bool = False,
) -> Path:
    """Write ``run_dir/last`` atomically (and ``run_dir/best`` when ``is_best``); return the last/ path.

    ``trainer_state`` is any nest of dicts/lists/scalars/tensors (optimizer and scheduler state dicts,
    RNG states, history): tensors go to ``trainer.safetensors``, the rest to ``trainer.json``.
    """
    return _write_checkpoint(Path(run_dir), _Snapshot.take(model_state, metadata, trainer_state, copy=False),
                             is_best)


class _Snapshot:
    """A checkpoint's content, detached from the live training state (with ``copy``, no tensor is shared
    with it, so training may go on changing its weights in place while the snapshot is written)."""

    def __init__(self, model: dict[str, torch.Tensor], metadata: dict[str, str],
                 trainer_tensors: dict[str, torch.Tensor], trainer_json: str) -> None:
        self.model, self.metadata = model, metadata
        self.trainer_tensors, self.trainer_json = trainer_tensors, trainer_json

    @classmethod
    def take(cls, model_state: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
             trainer_state: Mapping[str, Any], *, copy: bool) -> _Snapshot:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _split_tensors(trainer_state, "trainer", tensors)  # clones the trainer's tensors
        return cls(_contiguous_cpu(model_state, copy=copy), dict(metadata), tensors,
                   json.dumps(skeleton, indent=1, sort_keys=True))


def _write_checkpoint(run_dir: Path, snapshot: _Snapshot, is_best: bool) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(run_dir)

    def write(tmp: Path) -> None:
        _save_tensors(tmp / MODEL_FILE, snapshot.model, snapshot.metadata)
        _save_tensors(tmp / TRAINER_TENSORS_FILE, snapshot.trainer_tensors, {"format": str(FORMAT_VERSION)})
        _write_text(tmp / TRAINER_STATE_FILE, snapshot.trainer_json)

    last = _atomic_dir(run_dir / LAST, write)
    if is_best:
        # The files are never modified in place, so best/ can share them with last/ through hard links.
        _atomic_dir(run_dir / BEST, lambda tmp: _link_or_copy_files(last, tmp))
    return last


class BackgroundSaver:
    """Writes checkpoints on a thread, so that the next epoch trains while this one reaches the disk.

    :meth:`save` copies the state (on the caller's thread: training changes the weights in place) and
    returns; a worker thread then writes it exactly as :func:`save_checkpoint` does, atomically and
    fsynced. One save is in flight at a time: the next :meth:`save`, and :meth:`wait`, block until the
    previous one is on disk and raise its error if it failed; :attr:`failed` tells the trainer at once
    (it checks every step and stops, naming the path, instead of training an epoch more). A 187 MB
    AlexNet checkpoint takes about half a second to write and sync, several times a GPU epoch of the d2l
    recipe.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._failed = "the checkpoint"  # what the error in _error interrupted

    @property
    def failed(self) -> bool:
        """Whether the save in flight has already failed (a plain attribute read: no wait, no sync)."""
        return self._error is not None

    def save(self, run_dir: str | Path, *, model_state: Mapping[str, torch.Tensor],
             metadata: Mapping[str, str], trainer_state: Mapping[str, Any], is_best: bool = False,
             then: Callable[[], Any] | None = None) -> Path:
        """Start writing ``run_dir/last`` (and ``best``), then run ``then`` on the same thread once the
        checkpoint has landed (the trainer draws its curves there); return the path it will have."""
        self.wait()
        snapshot = _Snapshot.take(model_state, metadata, trainer_state, copy=True)
        self._thread = threading.Thread(target=self._write, args=(Path(run_dir), snapshot, is_best, then),
                                        name="classicnets-checkpoint")
        self._thread.start()
        return Path(run_dir) / LAST

    def wait(self, *, raise_error: bool = True) -> None:
        """Block until the save in flight is on disk; raise its error (unless ``raise_error`` is off)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            hint = ("; free some space or pass another --out" if isinstance(error, OSError)
                    and error.errno in (errno.ENOSPC, errno.EDQUOT) else "")
            raise CheckpointError(f"writing {self._failed} failed: {error}{hint}") from error

    def _write(self, run_dir: Path, snapshot: _Snapshot, is_best: bool,
               then: Callable[[], Any] | None) -> None:
        self._failed = f"the checkpoint {run_dir / LAST}"
        try:
            _write_checkpoint(run_dir, snapshot, is_best)
            if then is not None:
                self._failed = "what follows the checkpoint (the curves)"
                then()
        except BaseException as error:  # handed to the training thread by wait()
            self._error = error


def _atomic_dir(target: Path, write: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        _set_usual_permissions(tmp)
        _fsync_dir(tmp)
        aside = None
        if target.exists():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, aside)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _set_usual_permissions(directory: Path) -> None:
    # mkdtemp makes 0700 directories (and safetensors 0600 files); a checkpoint should be as readable as
    # any file the user writes, so apply the process's umask to 0777 / 0666 as open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for file in directory.iterdir():
        os.chmod(file, 0o666 & ~umask)


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_file(dict(tensors), str(path), metadata=metadata)
    _fsync_file(path)
    if _after_file_written is not None:
        _after_file_written(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if _after_file_written is not None:
        _after_file_written(path)


def _link_or_copy_files(source: Path, destination: Path) -> None:
    for file in source.iterdir():
        try:
            os.link(file, destination / file.name)
        except OSError:  # a file system without hard links
            shutil.copy2(file, destination / file.name)
            _fsync_file(destination / file.name)


def _contiguous_cpu(state: Mapping[str, torch.Tensor], copy: bool = False) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory; clone only those that alias another entry.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, live in state.items():
        tensor = _cpu_copy(live) if copy else live.detach().to("cpu").contiguous()
        key = tensor.untyped_storage().data_ptr()
        if key in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor`` that shares no memory with it, copied once: moving a device tensor
    to the CPU is already the copy; a CPU tensor that ``contiguous`` left as it was is cloned."""
    out = tensor.detach().to("cpu").contiguous()
    return out.clone() if out.data_ptr() == tensor.data_ptr() else out


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some file systems cannot fsync a directory; the data files are synced already
        pass


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete leftovers of a save that was killed, keeping a moved-aside checkpoint still needed."""
    for name in (LAST, BEST):
        for tmp in run_dir.glob(f".{name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        asides = sorted(run_dir.glob(f".{name}.old-*"))
        if asides and not (run_dir / name).exists():
            os.replace(asides.pop(), run_dir / name)  # the kill fell between the two renames
        for aside in asides:
            shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------- tensors <-> JSON-able state


def _split_tensors(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace each tensor in a nest of containers with {"__tensor__": key}, collecting it in ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = _cpu_copy(value)
        return {"__tensor__": key}
    if isinstance(value, Mapping):
        return {"__dict__": [[_split_tensors(k, f"{key}.k{i}", tensors),
                              _split_tensors(v, f"{key}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_split_tensors(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_split_tensors(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        return _split_tensors(torch.as_tensor(value), key, tensors)  # numpy arrays (numpy's RNG state)
    if hasattr(value, "item") and callable(value.item):
        return value.item()  # numpy scalars
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {key} in a checkpoint")


def _join_tensors(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            if value["__tensor__"] not in tensors:
                raise CheckpointError(f"{TRAINER_STATE_FILE} names the tensor {value['__tensor__']!r}, which "
                                      f"{TRAINER_TENSORS_FILE} lacks: the two files are from different saves "
                                      "or damaged; resume from another checkpoint or start a new run")
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_join_tensors(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_join_tensors(k, tensors): _join_tensors(v, tensors) for k, v in value["__dict__"]}
        raise CheckpointError(f"unexpected entry in {TRAINER_STATE_FILE}: {sorted(value)}")
    return value


# ------------------------------------------------------------------------------------------ loading


def resolve_checkpoint_dir(path: str | Path, prefer: tuple[str, ...] = (BEST, LAST)) -> Path:
    """The checkpoint directory that ``path`` names: itself, or a run dir's best/ (then last/)."""
    refuse_url(path, "checkpoint", CheckpointError)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory, "
                              f"a checkpoint directory or a {MODEL_FILE} file")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, expected a checkpoint directory")
    if (path / MODEL_FILE).is_file():
        return path
    for name in prefer:
        candidate = path / name
        if not candidate.exists():
            asides = sorted(path.glob(f".{name}.old-*"))  # a save was killed between its renames
            candidate = asides[-1] if asides else candidate
        if (candidate / MODEL_FILE).is_file():
            return candidate
    raise CheckpointError(
        f"{path} holds no checkpoint: expected {MODEL_FILE} in it or in its "
        f"{' or '.join(name + '/' for name in prefer)}; found {sorted(p.name for p in path.iterdir())[:10]}"
    )


def load_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata from a checkpoint dir, a run dir (best/, then last/) or a .safetensors file.

    Pickles (``torch.save`` files: .pt, .pth, ...) are refused: unpickling can run arbitrary code.
    """
    refuse_url(path, "checkpoint", CheckpointError)
    file = _model_file(Path(path))
    _refuse_non_safetensors(file)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{file} is not a readable safetensors file ({error}); "
                              "it may be truncated or corrupt") from None
    check_finite(state, f"{file}: weight")
    _check_input_statistics(metadata, file)
    return state, metadata


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor, naming the first such tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteCheckpointError(
                f"{what} {name!r} holds {bad:,} NaN or infinite value(s) of {tensor.numel():,}; the "
                "checkpoint cannot be used. Take an earlier one (the run's best/ or last/), or train again"
            )


def _check_input_statistics(metadata: Mapping[str, str], file: Path) -> None:
    """The header's mean and std normalise every input: each must be finite, and std positive."""
    for key in ("mean", "std"):
        try:
            values = json.loads(metadata.get(key, "null"))
        except ValueError:
            continue  # a malformed header is reported where the header is decoded
        if not isinstance(values, list):
            continue
        numbers = [v for v in values if isinstance(v, (int, float))]
        bad = [v for v in numbers if not math.isfinite(v) or (key == "std" and v <= 0)]
        if bad:
            need = "finite numbers" if key == "mean" else "finite and positive (inputs are divided by it)"
            raise NonFiniteCheckpointError(
                f"{file}: header field {key!r} is {values}; its values must be {need}. The header was "
                f"damaged or edited: restore it (the training set's per-channel {key} in [0, 1] units), "
                "or take another checkpoint"
            )


def _model_file(path: Path) -> Path:
    if path.is_file() or (path.suffix and not path.exists()):
        if path.suffix != ".safetensors":
            raise CheckpointError(_pickle_message(path) if path.suffix in _PICKLE_SUFFIXES else
                                  f"{path}: expected a .safetensors file or a checkpoint directory, "
                                  f"found a {path.suffix or 'suffix-less'} file")
        if not path.exists():
            raise CheckpointError(f"checkpoint file {path} does not exist")
        return path
    return resolve_checkpoint_dir(path) / MODEL_FILE


def _refuse_non_safetensors(file: Path) -> None:
    with open(file, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object. A torch.save zip starts
    # with "PK"; a raw pickle with 0x80 (the PROTO opcode). The JSON brace is checked first: a header
    # length whose low byte is 0x80 (or whose low bytes spell "PK") starts a valid safetensors file.
    if len(head) == 9 and head[8:9] == b"{":
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(_pickle_message(file))
    raise CheckpointError(f"{file} is not a safetensors file (bad header); it may be truncated or corrupt")


def _pickle_message(path: Path) -> str:
    return (f"{path} looks like a pickle (torch.save) file; a checkpoint here is a classicnets run "
            "(safetensors), because unpickling a file can run arbitrary code. A torchvision/timm-style "
            "state_dict loads as weights for a named model instead, read without running code: "
            "e.g. `classicnets predict resnet18 --weights FILE ...` or train(weights=FILE)")


def load_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The state saved with ``trainer_state`` by :func:`save_checkpoint`, tensors restored in place."""
    directory = resolve_checkpoint_dir(checkpoint_dir, prefer=(LAST, BEST))
    tensors_file, state_file = directory / TRAINER_TENSORS_FILE, directory / TRAINER_STATE_FILE
    for file in (tensors_file, state_file):
        if not file.is_file():
            raise CheckpointError(f"{directory} has no {file.name}: it holds weights only and cannot be "
                                  "resumed; start a new run with another --out (its weights still work with "
                                  "eval, predict and export, or start from them: --weights DIR)")
    _refuse_non_safetensors(tensors_file)
    try:
        with safe_open(str(tensors_file), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        skeleton = json.loads(state_file.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{directory}: cannot read the trainer state ({error})") from None
    check_finite(tensors, f"{tensors_file}: optimizer or scheduler tensor")
    try:
        return _join_tensors(skeleton, tensors)
    except (TypeError, ValueError, KeyError) as error:  # a hand-edited or damaged trainer.json
        raise CheckpointError(f"{directory / TRAINER_STATE_FILE} is malformed ({error!r}); resume from "
                              "another checkpoint or start a new run") from None


def load_into_model(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str,
                    name: str | None = None) -> None:
    """``model.load_state_dict(state, strict=True)``, after refusing weights whose names or shapes differ
    from the model's with a :class:`CheckpointError` that lists the first differences. ``name``: the model
    the checkpoint's header names, for the message."""
    _check_weights_fit(model, state, source, name)
    model.load_state_dict(state, strict=True)


def _check_weights_fit(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str,
                       name: str | None = None) -> None:
    """Refuse weights whose names or shapes differ from the model's (which may live on the meta device),
    listing the first differences."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        problems = []
        kinds = (("missing", missing), ("unexpected", unexpected),
                 ("shape mismatch (file vs model)", reshaped))
        for label, items in kinds:
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
        which = f"model {name!r} that its header names" if name else "this model"
        raise CheckpointError(
            f"{source}: the weights do not fit {which} ({'; '.join(problems)}). The file was saved from "
            "another model or its header was edited; use it with the model it came from"
        )


# -------------------------------------------------------------------------------- load_model(path)


@dataclass(frozen=True)
class Preprocessing:
    """How the training inputs were made: channels, square size, mean/std (None: pixels in [0, 1])."""

    in_channels: int
    image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode on the CPU, with its decoded metadata."""

    model: torch.nn.Module
    metadata: dict[str, Any]
    source: Path  # the model.safetensors file (or the --weights file)
    report: Any = None  # with --weights: the weights.LoadReport (what was loaded)
    classes_assumed: bool = False  # a bare state_dict names no classes: ImageNet's or indices stand in

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        m = self.metadata
        mean, std = m.get("mean"), m.get("std")
        return Preprocessing(int(m["in_channels"]), int(m["image_size"]),
                             None if mean is None else tuple(mean), None if std is None else tuple(std))

    @property
    def run_dir(self) -> Path:
        """Where results go unless told: the run directory (not best/ or last/, which each save replaces);
        for a bare weights file, maybe in a download cache, runs/MODEL-STEM instead of next to it."""
        if self.classes_assumed:
            return Path("runs") / f"{self.metadata['model']}-{self.source.stem.split('.')[0]}"
        return run_dir_of(self.source)


def run_dir_of(source: Path) -> Path:
    """The run directory of a checkpoint file: its folder, or the folder above best/ or last/."""
    directory = source.parent
    return directory.parent if directory.name in (BEST, LAST) else directory


def load_model(checkpoint: str | Path | LoadedCheckpoint, *,
               weights: str | Path | None = None) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint was saved from and load its weights (``strict``: every key and shape).

    ``checkpoint`` is a run directory (best/ then last/), a checkpoint directory or a ``model.safetensors``.
    Pickles are refused unread; weights of another model are refused with the first mismatches. The header
    is validated field by field, and the model it names is first built on the meta device (shapes only,
    nothing allocated) and compared with the file's tensors: a header edited to ask for a huge model is
    refused before it can take the machine's memory.
    With ``weights``, ``checkpoint`` is a model name and ``weights`` a torchvision/timm-style state_dict
    (``.pth``, read with ``weights_only``), a ``.safetensors`` file or a run directory
    (:mod:`classicnets.weights`); the model gets the file's classes and input channels, ImageNet's class
    names for 1000 classes, and the model's default input size and mean/std.
    """
    from .registry import create_model

    if isinstance(checkpoint, LoadedCheckpoint):
        return checkpoint
    if weights is not None:
        return _load_with_weights(str(checkpoint), weights)
    refuse_url(checkpoint, "checkpoint", CheckpointError)  # before Path() folds its "//"
    source = _model_file(Path(checkpoint))
    state, raw_metadata = load_model_weights(source)
    metadata = validate_metadata(raw_metadata, source)
    name, options = metadata["model"], metadata["model_options"]

    def build() -> torch.nn.Module:
        try:
            return create_model(name, num_classes=metadata["num_classes"],
                                in_channels=metadata["in_channels"], **options)
        except (ClassicnetsError, TypeError, ValueError) as error:  # unknown name or option, bad value
            raise CheckpointError(f"{source}: its header names model {name!r} with options {options}, "
                                  f"which cannot be built here: {error}") from None

    with torch.device("meta"):
        shapes_only = build()
    _check_weights_fit(shapes_only, state, source, name)
    _check_image_size_fits(shapes_only, metadata["image_size"], name, source)
    model = build()
    model.load_state_dict(state, strict=True)
    return LoadedCheckpoint(model.eval(), metadata, source)


def _load_with_weights(name: str, weights: str | Path) -> LoadedCheckpoint:
    from . import weights as w
    from .registry import create_model, model_info

    file = w.read_weights(weights)
    if file.metadata:  # a classicnets run: its header says how to build and feed the model
        options = file.metadata.get("model_options") or {}
    else:
        options = {}
    num_classes, in_channels = w.infer_size(file, name, options)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    report = w.load_weights(model, file, name=name, options=options, new_head=False)
    if file.metadata:
        metadata = validate_metadata(file.header, file.path)
    else:
        info = model_info(name).for_channels(in_channels)
        metadata = {"model": name, "model_options": options, "num_classes": num_classes,
                    "in_channels": in_channels, "classes": w.class_names(file, num_classes),
                    "image_size": info.default_input[-1], "mean": list(info.mean), "std": list(info.std),
                    "dataset": ""}
    source = _model_file(file.path) if file.path.is_dir() else file.path
    return LoadedCheckpoint(model.eval(), metadata, source, report, classes_assumed=not file.metadata)


def _check_image_size_fits(model: torch.nn.Module, size: int, name: str, source: Path) -> None:
    low, high = getattr(model, "input_sizes", (1, None))
    if size < low or (high is not None and size > high):
        sizes = f"{low} to {high}" if high is not None else f"{low} or more"
        raise CheckpointError(f"{source}: its header's image_size {size} is not one model {name!r} takes "
                              f"({sizes} px); the file was edited or is corrupt")
