"""``summarize(model, input_size)``: per-layer rows and totals of one training step, counted on meta tensors.

The model is copied onto the meta device (shapes and dtypes, no data), so the counting pass costs a few
milliseconds per layer whatever the model's size, and the user's model is never touched: no hooks, buffers,
gradients or mode changes are left on it.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import ClassicnetsError, ConfigError, InputShapeError
from .costs import CONVENTION
from .trace import LayerFailure, ModuleStats, trace_step

if TYPE_CHECKING:  # measure.py is imported only when measuring
    from .measure import Measurement

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
ADAM_STEP_BYTES = 4  # torch.optim.Adam keeps a float32 `step` scalar per parameter tensor
# Temporaries of one optimizer step, in trainable-parameter sizes: Adam's foreach step builds sqrt(v) for
# every parameter at once; SGD (no weight decay) updates in place.
OPTIMIZER_TEMPORARIES = {"sgd": 0, "sgd_momentum": 0, "adam": 1}


@dataclass
class LayerRow:
    """One row of the summary: a module's own work, or its whole subtree's where the depth folds it."""

    name: str
    type: str
    depth: int
    calls: int
    output_shape: list
    params_trainable: int
    params_frozen: int
    macs: int
    flops: int
    other_ops: int
    backward_flops: int
    activation_bytes: int
    flops_share: float  # of the model's forward FLOPs
    params_share: float  # of the model's parameters
    folded: bool = False  # True: the row holds its submodules too
    # A module whose submodules have rows of their own (features, classifier): the whole part's totals, for
    # reading off which part holds the parameters and which the compute. None for other rows.
    part_params: int | None = None
    part_flops: int | None = None
    part_activation_bytes: int | None = None
    forward_ms: float | None = None
    backward_ms: float | None = None

    @property
    def params(self) -> int:
        return self.params_trainable + self.params_frozen


@dataclass
class Totals:
    params_trainable: int
    params_frozen: int
    param_bytes: int
    buffer_bytes: int
    macs: int
    flops: int
    other_ops: int
    backward_flops: int
    activation_bytes: int  # kept for backward, the input batch included when a layer keeps it
    input_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: dict[str, int]  # per optimizer: "sgd", "sgd_momentum", "adam"
    peak_train_bytes: dict[str, int]  # estimate per optimizer, see `peak_estimate`
    most_params_layer: str
    most_flops_layer: str

    @property
    def params(self) -> int:
        return self.params_trainable + self.params_frozen


@dataclass
class Summary:
    """Rows (at ``depth``) and totals of one training step of ``model`` on a batch of ``input_size``."""

    model: str
    input_size: tuple[int, ...]
    batch_size: int
    dtype: str
    training: bool
    depth: int | None
    modules: list[ModuleStats] = field(repr=False)  # every module, its own work only
    totals: Totals
    convention: str = CONVENTION
    measurement: Measurement | None = None  # set when measured

    @property
    def rows(self) -> list[LayerRow]:
        return rows_at_depth(self.modules, self.depth, self.totals)

    def to_dict(self) -> dict:
        from .render import summary_dict

        return summary_dict(self)

    def render(self, fmt: str = "table", width: int | None = None) -> str:
        """The summary as ``table`` (terminal), ``markdown``, ``json`` or ``csv`` text."""
        from .render import render_summary

        return render_summary(self, fmt, width=width)

    def __str__(self) -> str:
        return self.render("table")


def summarize(model: nn.Module, input_size: tuple[int, ...] | None = None, batch_size: int = 1,
              dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
              depth: int | None = 3, train: bool = True, measure: bool = False, repeats: int = 5,
              optimizer: str = "sgd_momentum", name: str | None = None, weights=None) -> Summary:
    """Count one training step of ``model`` on a batch of ``batch_size`` inputs of ``input_size`` (C, H, W).

    ``input_size`` defaults to ``model.info.default_input``. The counting runs on a meta-device copy in
    ``dtype`` (byte counts follow it), in training mode unless ``train=False``. ``depth`` folds deeper modules
    into their ancestor's row (``None``: every module). ``measure=True`` also runs ``repeats`` real steps on
    ``device`` (see :mod:`.measure`) for measured peak memory and per-layer times. ``weights`` (a file
    :func:`classicnets.weights.load_weights` reads) is loaded into the zoo model first, strictly, so the
    measured steps run on them and a file that does not fit is refused.
    """
    if weights is not None:
        from ..weights import load_weights

        load_weights(model, weights, name=model.info.name)
    dtype = resolve_dtype(dtype)
    input_size = _input_size(model, input_size)
    _check_arguments(batch_size, depth, repeats)
    label = name or getattr(getattr(model, "info", None), "name", "") or type(model).__name__
    example = torch.empty((batch_size, *input_size), dtype=dtype, device="meta")
    modules = _traced_modules(model, example, dtype, train, label)
    totals = _totals(model, modules, example, dtype)
    summary = Summary(label, tuple(input_size), batch_size, str(dtype).removeprefix("torch."), train, depth,
                      modules, totals)
    if measure:
        from .measure import measure_step

        summary.measurement = measure_step(model, example.shape, dtype, device, train, repeats, optimizer,
                                           modules)
    return summary


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


def _input_size(model: nn.Module, input_size) -> tuple[int, ...]:
    if input_size is None:
        info = getattr(model, "info", None)
        if info is None:
            raise ConfigError("input_size is required for a model without `info`, e.g. (3, 224, 224)")
        return tuple(info.default_input)
    size = tuple(input_size)
    if not size or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"input_size must be positive integers (C, H, W), no batch; got {input_size!r}")
    return size


def _check_arguments(batch_size: int, depth: int | None, repeats: int) -> None:
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
    if depth is not None and not (isinstance(depth, int) and depth >= 0):
        raise ConfigError(f"depth must be a non-negative integer or None (every module); got {depth!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ConfigError(f"repeats must be a positive integer; got {repeats!r}")


def meta_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are empty meta tensors (floats in ``dtype``).

    The parameters are swapped in through ``deepcopy``'s memo, so no weight is ever copied.
    """
    memo = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        new_dtype = dtype if tensor.is_floating_point() else tensor.dtype
        meta = torch.empty_like(tensor, device="meta", dtype=new_dtype)
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(model, memo)


def _traced_modules(model: nn.Module, example: torch.Tensor, dtype: torch.dtype, train: bool,
                    label: str) -> list[ModuleStats]:
    try:
        return trace_step(meta_copy(model, dtype).train(train), example)
    except LayerFailure as failure:
        if not _meta_unsupported(failure.error) or _on_meta(model):
            raise InputShapeError(_failure_message(model, label, example, failure)) from failure.error
    # The forward does what meta tensors cannot (reads values with .item(), keeps plain CPU tensors as
    # attributes): count on a real CPU copy instead; slower, the same numbers.
    real = copy.deepcopy(model).to(device="cpu", dtype=dtype).train(train)
    try:
        return trace_step(real, torch.zeros(example.shape, dtype=dtype))
    except LayerFailure as failure:
        raise InputShapeError(_failure_message(model, label, example, failure)) from failure.error


def _meta_unsupported(error: BaseException) -> bool:
    return isinstance(error, NotImplementedError) or "meta" in str(error)


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def _failure_message(model: nn.Module, label: str, example: torch.Tensor, failure: LayerFailure) -> str:
    where = f"layer '{failure.stats.name}' ({failure.stats.type})" if failure.stats.name else (
        f"the model's own forward ({failure.stats.type})")
    head = f"{label} failed in {where} on input of shape {tuple(example.shape)} (batch first)"
    if isinstance(failure.error, ClassicnetsError):  # the model checked its input and said what it wants
        return f"{head}: {failure.error}"
    if "Expected more than 1 value per channel when training" in str(failure.error):
        # batch norm in training mode averages over the batch and the map: one value per channel has no
        # variance. Any input size hits it once the maps shrink to 1x1; the batch or eval mode fixes it.
        return (f"{head}: batch norm in training mode needs more than one value per channel, and a batch "
                f"of {example.shape[0]} reaches it as {_shape_text(failure.input_shape)}; count a batch of 2 "
                "or more (--batch-size 2, batch_size=2) or in eval mode (--eval, train=False)")
    info = getattr(model, "info", None)
    hint = (f"; {label} takes input like {','.join(map(str, info.default_input))} "
            f"(smallest {','.join(map(str, info.min_input))})" if info is not None else "")
    return (f"{head}; that layer got {_shape_text(failure.input_shape)}: {failure.error}{hint}; "
            "pass an input size the model takes")


def _shape_text(shapes: list) -> str:
    if len(shapes) == 1 and isinstance(shapes[0], list) and all(isinstance(s, int) for s in shapes[0]):
        return str(tuple(shapes[0]))
    return str(shapes)


# ------------------------------------------------------------------------------------------------
# Totals


def _totals(model: nn.Module, modules: list[ModuleStats], example: torch.Tensor,
            dtype: torch.dtype) -> Totals:
    trainable_bytes, trainable_tensors, param_bytes = _param_bytes(model, dtype)
    buffer_bytes = sum(_bytes_in(b, dtype) for b in model.buffers())
    flops = sum(m.flops for m in modules)
    state = {"sgd": 0, "sgd_momentum": trainable_bytes,
             "adam": 2 * trainable_bytes + ADAM_STEP_BYTES * trainable_tensors}
    activations = sum(m.activation_bytes for m in modules)
    largest_output = max((m.output_bytes for m in modules if not m.has_children), default=0)
    peak = {opt: peak_estimate(param_bytes + buffer_bytes, trainable_bytes, state_bytes, activations,
                               largest_output, OPTIMIZER_TEMPORARIES[opt] * trainable_bytes)
            for opt, state_bytes in state.items()}
    leaves = [m for m in modules if m.name]
    return Totals(
        params_trainable=sum(m.params_trainable for m in modules),
        params_frozen=sum(m.params_frozen for m in modules),
        param_bytes=param_bytes, buffer_bytes=buffer_bytes,
        macs=flops // 2, flops=flops, other_ops=sum(m.other_ops for m in modules),
        backward_flops=sum(m.backward_flops for m in modules),
        activation_bytes=activations, input_bytes=example.numel() * example.element_size(),
        gradient_bytes=trainable_bytes, optimizer_state_bytes=state, peak_train_bytes=peak,
        most_params_layer=_argmax_name(leaves, lambda m: m.params_trainable + m.params_frozen),
        most_flops_layer=_argmax_name(leaves, lambda m: m.flops),
    )


def peak_estimate(weight_bytes: int, gradient_bytes: int, state_bytes: int, activation_bytes: int,
                  largest_output_bytes: int, step_temporary_bytes: int) -> int:
    """Peak bytes of a training step after the first (the optimizer state exists).

    Weights, gradients and optimizer state live throughout. On top: at the start of backward, the saved
    activations plus the gradient flowing into and out of the largest layer (two tensors of its output's
    size); or, in the optimizer step, its temporaries (Adam's ``sqrt(v)``), whichever is larger. An upper
    bound for backward: gradients in fact grow while activations are freed.
    """
    backward_extra = activation_bytes + 2 * largest_output_bytes
    return weight_bytes + gradient_bytes + state_bytes + max(backward_extra, step_temporary_bytes)


def _param_bytes(model: nn.Module, dtype: torch.dtype) -> tuple[int, int, int]:
    """(bytes of trainable parameters, number of trainable tensors, bytes of all parameters), in ``dtype``."""
    params = list(model.parameters())  # shared parameters appear once
    trainable = [p for p in params if p.requires_grad]
    trainable_bytes = sum(_bytes_in(p, dtype) for p in trainable)
    return trainable_bytes, len(trainable), sum(_bytes_in(p, dtype) for p in params)


def _bytes_in(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    if not tensor.is_floating_point():
        return tensor.numel() * tensor.element_size()
    return tensor.numel() * torch.empty((), dtype=dtype).element_size()


def _argmax_name(modules: list[ModuleStats], key) -> str:
    best = max(modules, key=key, default=None)
    return best.name if best is not None and key(best) > 0 else ""


# ------------------------------------------------------------------------------------------------
# Rows at a depth


def rows_at_depth(modules: list[ModuleStats], depth: int | None, totals: Totals) -> list[LayerRow]:
    """A row per module down to ``depth``; a module at ``depth`` with submodules holds its whole subtree.

    Every row holds work no other row holds, so the rows' columns add up to the totals at any depth.
    """
    rows, open_row = [], None
    for module in modules:
        if depth is not None and module.depth > depth:
            _fold_into(open_row, module)
            continue
        open_row = _row(module, folded=depth is not None and module.depth == depth and module.has_children)
        rows.append(open_row)
    for row in rows:
        if not row.folded and _has_children(modules, row.name):
            part = [m for m in modules if _within(m.name, row.name)]
            row.part_params = sum(m.params_trainable + m.params_frozen for m in part)
            row.part_flops = sum(m.flops for m in part)
            row.part_activation_bytes = sum(m.activation_bytes for m in part)
        row.macs = row.flops // 2
        row.flops_share = row.flops / totals.flops if totals.flops else 0.0
        row.params_share = row.params / totals.params if totals.params else 0.0
    return rows


def _within(name: str, part: str) -> bool:
    return not part or name == part or name.startswith(part + ".")


def _has_children(modules: list[ModuleStats], name: str) -> bool:
    return any(m.name != name and _within(m.name, name) for m in modules)


def _row(module: ModuleStats, folded: bool) -> LayerRow:
    values = {f.name: getattr(module, f.name) for f in fields(LayerRow) if hasattr(module, f.name)}
    return LayerRow(**{**values, "macs": 0, "flops_share": 0.0, "params_share": 0.0, "folded": folded})


_ADDED = ("params_trainable", "params_frozen", "flops", "other_ops", "backward_flops", "activation_bytes")


def _fold_into(row: LayerRow, module: ModuleStats) -> None:
    for name in _ADDED:
        setattr(row, name, getattr(row, name) + getattr(module, name))
    for name in ("forward_ms", "backward_ms"):
        if getattr(module, name) is not None:
            setattr(row, name, (getattr(row, name) or 0.0) + getattr(module, name))


def as_plain(value):
    """Dataclasses to dicts, tuples to lists: what JSON can hold."""
    if hasattr(value, "__dataclass_fields__"):
        return as_plain(asdict(value))
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value
