"""Start from weights: read a weights file without running code, fit it to a zoo model, say what loaded.

    >>> model = classicnets.create_model("resnet18", num_classes=10)
    >>> report = load_weights(model, "resnet18-f37072fd.pth", name="resnet18")
    >>> print(report)     # 120 tensors loaded; fc.weight, fc.bias re-initialised (1000 -> 10 classes)

A weights file is a torchvision or timm-style ``.pth``/``.pt`` state_dict (read with
``torch.load(weights_only=True)``: only tensors and plain containers are unpickled, never code), a
``.safetensors`` file, or a classicnets run or checkpoint directory. Keys are matched strictly. When only the
classifier differs in shape (weights for another number of classes), everything else loads and the
classifier keeps the model's fresh initialisation; any other difference is an error that lists the first
differing keys and shapes, and names the zoo model the file was made for when one fits it.

The classifier is found by building the model for two class counts on the meta device (no memory, no
compute) and comparing shapes, so every model family is covered without a per-model table. The "head"
(the parameters ``forward_head`` uses, plus the classifier) is found the same way, by tracing which modules
``forward_head`` calls; fine-tuning freezes and slows down everything else (training/config.py).

The train, eval, predict, summary and export commands all load ``--weights`` through this module.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError

# Containers that training scripts wrap a state_dict in (timm's train.py and Lightning: "state_dict";
# others "model" or "model_state_dict"); the first one found that holds tensors is used.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes a wrapped model adds to every key: DistributedDataParallel's and torch.compile's.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
BN_COUNTER = "num_batches_tracked"
SHOW = 5  # how many keys an error or report lists before "and N more"


@dataclass
class WeightsFile:
    """A state_dict read from disk, with what a classicnets checkpoint's header says about it (else None)."""

    path: Path
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # how the file was unwrapped
    header: dict[str, str] = field(default_factory=dict)  # a safetensors file's raw str -> str metadata

    @property
    def describes(self) -> str:
        return f"a classicnets checkpoint of {self.metadata['model']}" if self.metadata else "a state_dict"


@dataclass
class LoadReport:
    """Which tensors came from the file, which kept the model's initialisation and which were left out."""

    source: Path
    model: str
    loaded: list[str]
    reinitialised: list[str]  # the model's classifier, left as initialised: the file's is for other classes
    ignored: list[str]  # tensors in the file that were not used (the file's own classifier)
    counters_absent: list[str] = field(default_factory=list)  # BatchNorm step counters older files lack
    class_change: tuple[int, int] | None = None  # (the file's classes, the model's)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"weights {self.source}: {len(self.loaded)} tensors loaded into {self.model}"
               + (f" ({'; '.join(self.notes)})" if self.notes else "")]
        if self.reinitialised:
            change = (f" (the file has {self.class_change[0]} classes, the model {self.class_change[1]})"
                      if self.class_change else "")
            out.append(f"  re-initialised{change}: {', '.join(self.reinitialised)}")
        if self.ignored:
            out.append(f"  ignored from the file: {', '.join(self.ignored)}")
        if self.counters_absent:
            out.append(f"  {len(self.counters_absent)} BatchNorm {BN_COUNTER} counters absent from the file "
                       "(kept at 0, as torch does for files saved before they existed)")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ------------------------------------------------------------------------------------------- reading


def read_weights(path: str | Path) -> WeightsFile:
    """The tensors of a weights file or classicnets run/checkpoint directory, read without running code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist; pass a .pth/.pt state_dict, a "
                              ".safetensors file or a classicnets run directory")
    if path.is_dir() or path.suffix == ".safetensors":
        from .checkpoint import load_model_weights, parse_metadata

        state, header = load_model_weights(path)
        metadata = parse_metadata(header) if "model" in header else None
        return WeightsFile(path, state, metadata, header=header)
    return _read_pickled_state_dict(path)


def _read_pickled_state_dict(path: Path) -> WeightsFile:
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive ("PK"); files from before torch 1.6 are a bare pickle (the PROTO opcode)
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a torch.save file (nor .safetensors, nor a run directory); "
                              "pass the .pth/.pt state_dict itself")
    try:
        # weights_only: the unpickler accepts tensors, numbers, strings and plain containers only, so a
        # file crafted to run code on load (a __reduce__ that calls os.system) is refused, not executed.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused {path}: it holds Python objects other than tensors ({_refused_object(error)}). "
            "Loading such a file "
            "could run arbitrary code, so classicnets reads only plain state_dicts. If you trust its source, "
            "re-save just the weights: torch.save(model.state_dict(), 'weights.pth')") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable torch.save file ({str(error).splitlines()[0]}); "
                              "it may be truncated, or not a weights file") from None
    state, notes = _unwrap(loaded, path)
    return WeightsFile(path, state, None, notes)


def _refused_object(error: Exception) -> str:
    """The part of torch's long weights_only message that names the refused object."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return f"it would call {found.group(1)}" if found else str(error).strip().splitlines()[0][:200]


def _unwrap(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes = []
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        for key in CONTAINER_KEYS:
            if isinstance(loaded.get(key), Mapping) and _is_state_dict(loaded[key]):
                loaded, notes = loaded[key], [f"the state_dict under {key!r}"]
                break
    if not isinstance(loaded, Mapping) or not _is_state_dict(loaded) or not loaded:
        found = (f"a dict with keys {sorted(map(str, loaded))[:SHOW]}" if isinstance(loaded, Mapping)
                 else type(loaded).__name__)
        raise CheckpointError(f"{path} holds {found}, not a state_dict of tensors; save the weights with "
                              "torch.save(model.state_dict(), path)")
    state = {str(k): v for k, v in loaded.items()}
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
            notes.append(f"{prefix!r} prefix removed")
    return state, notes


def _is_state_dict(value: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in value.values())


# ---------------------------------------------------------------------------- the model's anatomy


@cache
def _meta_shapes(name: str, options_key: tuple, num_classes: int, in_channels: int) -> dict[str, tuple]:
    from .registry import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, **dict(options_key))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _key(options: Mapping[str, Any] | None) -> tuple:
    return tuple(sorted((options or {}).items()))


def classifier_keys(name: str, options: Mapping[str, Any] | None = None, in_channels: int = 3) -> set[str]:
    """The tensors whose shapes depend on the number of classes (the classifier, auxiliary ones too)."""
    two = _meta_shapes(name, _key(options), 2, in_channels)
    three = _meta_shapes(name, _key(options), 3, in_channels)
    return {k for k in two if two[k] != three[k]}


def head_parameter_names(name: str, options: Mapping[str, Any] | None = None, *, num_classes: int = 10,
                         in_channels: int = 3) -> frozenset[str]:
    """Names of the parameters ``forward_head`` uses, plus the classifier's: what fine-tuning trains first."""
    from .registry import create_model, model_info

    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, **dict(options or {}))
    called: set[nn.Module] = set()
    hooks = [m.register_forward_pre_hook(lambda module, _: called.add(module)) for m in model.modules()]
    size = model_info(name).min_input[-1]
    with torch.no_grad():
        features = model.eval().forward_features(torch.zeros(1, in_channels, size, size, device="meta"))
        called.clear()  # only the modules forward_head calls count
        model.forward_head(features)
    for hook in hooks:
        hook.remove()
    names = {f"{prefix}.{p}" if prefix else p
             for prefix, module in model.named_modules() if module in called
             for p, _ in module.named_parameters(recurse=False)}
    parameters = dict(model.named_parameters()).keys()
    return frozenset(names | (classifier_keys(name, options, in_channels) & parameters))


# ---------------------------------------------------------------------------------------- fitting


def load_weights(model: nn.Module, weights: str | Path | WeightsFile, *, name: str,
                 options: Mapping[str, Any] | None = None, new_head: bool = True) -> LoadReport:
    """Load ``weights`` into ``model`` (the zoo model ``name`` built with ``options``) and report what loaded.

    Strict: every tensor of the model must come from the file with its shape, except, with ``new_head``,
    the classifier when the file is for another number of classes (then the model's own freshly initialised
    classifier is kept and the file's is ignored). Anything else raises :class:`CheckpointError`.
    """
    file = weights if isinstance(weights, WeightsFile) else read_weights(weights)
    _check_named_model(file, name)
    expected = model.state_dict()
    state = file.state
    missing = [k for k in expected if k not in state]
    counters = [k for k in missing if k.endswith(BN_COUNTER)]
    missing = [k for k in missing if k not in counters]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    in_channels = getattr(model, "in_channels", 3)
    classifier = classifier_keys(name, options, in_channels) if reshaped else set()
    new_classes = bool(reshaped) and new_head and not missing and not unexpected and set(reshaped) == {
        k for k in classifier if k in state}
    if (missing or unexpected or reshaped) and not new_classes:
        raise CheckpointError(_mismatch_message(file, name, options, in_channels, expected, missing,
                                                unexpected, reshaped))
    to_load = {k: v for k, v in state.items() if k not in reshaped}
    with torch.no_grad():
        for key, tensor in to_load.items():
            expected[key].copy_(tensor)  # state_dict() shares storage with the model: this loads in place
    class_change = _class_change(state, expected, reshaped) if reshaped else None
    return LoadReport(file.path, name, loaded=list(to_load), reinitialised=list(reshaped),
                      ignored=list(reshaped), counters_absent=counters, class_change=class_change,
                      notes=file.notes)


def _check_named_model(file: WeightsFile, name: str) -> None:
    if file.metadata and file.metadata.get("model") != name:
        raise CheckpointError(f"{file.path} is a classicnets checkpoint of {file.metadata.get('model')!r}, "
                              f"not {name!r}; use the model {file.metadata.get('model')} with it (or "
                              f"weights made for {name})")


def _class_change(state, expected, reshaped) -> tuple[int, int] | None:
    key = reshaped[-1]  # the last layer's bias (or weight): its first dimension counts the classes
    return int(state[key].shape[0]), int(expected[key].shape[0])


def _shape(t) -> str:
    return "x".join(map(str, tuple(t.shape) if hasattr(t, "shape") else t)) or "scalar"


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def _mismatch_message(file: WeightsFile, name, options, in_channels, expected, missing, unexpected,
                      reshaped) -> str:
    state = file.state
    parts = []
    if reshaped:
        parts.append(f"{len(reshaped)} with other shapes (file vs model): " + _listed(
            [f"{k} {_shape(state[k])} vs {_shape(expected[k])}" for k in reshaped]))
    if missing:
        parts.append(f"{len(missing)} missing from the file: "
                     + _listed([f"{k} {_shape(expected[k])}" for k in missing]))
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model: "
                     + _listed([f"{k} {_shape(state[k])}" for k in unexpected]))
    message = f"weights {file.path} do not fit {name}: {'; '.join(parts)}."
    other = guess_architecture(state, exclude=name)
    channels = _input_channels_change(state, expected, reshaped)
    if channels and not (missing or unexpected):
        message += (f" The file's model takes {channels[0]}-channel images and this one {channels[1]}: "
                    f"train on {channels[0]}-channel images (an RGB image folder for ImageNet weights).")
    elif other:
        message += (f" The file holds weights for {' or '.join(other)}, not {name}: use the model {other[0]}"
                    f" with it (or a weights file made for {name}).")
    elif reshaped and not (missing or unexpected):
        message += (f" The names match {name} but the sizes do not: the file was saved from {name} with "
                    "other options (width_mult, in_channels) or from another model with the same layout.")
    return message


def _input_channels_change(state, expected, reshaped) -> tuple[int, int] | None:
    """(the file's, the model's) input channels when only the first layer differs, and only there."""
    first = next(iter(expected))
    if reshaped != [first] or state[first].dim() != 4:
        return None
    found, wanted = tuple(state[first].shape), tuple(expected[first].shape)
    if found[:1] + found[2:] != wanted[:1] + wanted[2:]:
        return None
    return found[1], wanted[1]


def guess_architecture(state: Mapping[str, torch.Tensor], *, exclude: str = "") -> list[str]:
    """Zoo models whose tensor names ``state`` has, exactly; those whose shapes (at default options,
    classifier aside) fit too when there are any, else all with those names (another width_mult)."""
    from .registry import list_models

    first_conv = next((t for t in state.values() if t.dim() == 4), None)
    in_channels = int(first_conv.shape[1]) if first_conv is not None else 3
    keys = {k for k in state if not k.endswith(BN_COUNTER)}
    named, fits = [], []
    for candidate in list_models():
        if candidate == exclude:
            continue
        shapes = _meta_shapes(candidate, (), 2, in_channels)
        if {k for k in shapes if not k.endswith(BN_COUNTER)} != keys:
            continue
        named.append(candidate)
        classifier = classifier_keys(candidate, None, in_channels)
        if all(tuple(state[k].shape) == shapes[k] for k in keys if k not in classifier):
            fits.append(candidate)
    return fits or named


# ------------------------------------------------------------------------------- inference from a file


def infer_size(file: WeightsFile, name: str, options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(num_classes, in_channels) of the model ``name`` that the file's tensors were saved from."""
    if file.metadata:
        return int(file.metadata["num_classes"]), int(file.metadata["in_channels"])
    in_channels = _dimension_of(file, name, options, vary="in_channels")
    num_classes = _dimension_of(file, name, options, vary="num_classes", in_channels=in_channels)
    return num_classes, in_channels


def _dimension_of(file: WeightsFile, name: str, options, *, vary: str, in_channels: int = 3) -> int:
    """Read a size off the file: build the model for two values of ``vary`` and find a tensor that changes."""
    sizes = {"num_classes": 2, "in_channels": in_channels}
    a = _meta_shapes(name, _key(options), **sizes)
    sizes[vary] = sizes[vary] + 1
    b = _meta_shapes(name, _key(options), **sizes)
    for key in a:
        if a[key] != b[key] and key in file.state:
            dim = next(i for i, (x, y) in enumerate(zip(a[key], b[key], strict=True)) if x != y)
            if file.state[key].dim() == len(a[key]):
                return int(file.state[key].shape[dim])
    if vary == "in_channels":
        return 3
    raise CheckpointError(f"{file.path} does not hold {name}'s classifier "
                          f"({', '.join(k for k in a if a[k] != b[k])}); is it weights for {name}?")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (0 tench ... 999 toilet tissue)."""
    from importlib.resources import files

    text = files("classicnets.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()


def class_names(file: WeightsFile, num_classes: int) -> list[str]:
    """The file's class names: a run's own, ImageNet's for 1000 classes, else their indices."""
    if file.metadata:
        return list(file.metadata["classes"])
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]
