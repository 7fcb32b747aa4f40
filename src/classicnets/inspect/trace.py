"""One traced training step (forward, then backward of the summed outputs) on a copy of the model.

Public PyTorch mechanisms see everything the step does, with no change to the model's code:

- global module forward hooks keep the stack of modules whose ``forward`` is running, so an aten op is
  charged to the innermost one (functional calls inside a ``forward`` go to that module; a shared module is
  charged once per call);
- a ``TorchFunctionMode`` sees every torch function as it returns: the autograd nodes between its outputs
  and its tensor arguments (``grad_fn.next_functions``) are the ones it created, given to the innermost
  module running then, whatever the module's arguments and outputs look like;
- a ``TorchDispatchMode`` sees every aten op; in backward, a pre-hook on every node
  (``Node.register_prehook``) says which node runs, hence which module's forward created it;
- ``saved_tensors_hooks`` see every tensor autograd keeps for backward, deduplicated by storage.

The hooks are global only while the step runs and are removed on exit, even after an error.

Why not ``torch.utils.module_tracker.ModuleTracker``: it keeps a set of the running modules' names (no call
counts, no input shapes, no order), and in backward it enters and leaves a module by gradient hooks on its
outputs and inputs, which cannot tell apart parallel branches that read the same tensor: in GoogLeNet's
Inception blocks it charged the backward FLOPs of about half the 57 convs (29-30, run to run) to another
module (the totals agreed), where each node here goes to the call that created it.
Nor ``torch._C`` calls (autograd sequence numbers, the running graph task), which a torch upgrade may
change; ``TorchDispatchMode`` is the documented way to extend torch (and what FlopCounterMode builds on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Container
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .costs import is_counted, matmul_flops, other_ops
from .fastmeta import fast_meta_outputs


@dataclass
class ModuleStats:
    """What one module did in the step, by itself (its submodules excluded)."""

    name: str  # fully qualified name, "" for the model itself
    type: str
    depth: int
    has_children: bool
    calls: int = 0
    output_shape: list = field(default_factory=list)  # of the first call
    input_shape: list = field(default_factory=list)
    params_trainable: int = 0
    params_frozen: int = 0
    flops: int = 0
    other_ops: int = 0
    backward_flops: int = 0
    activation_bytes: int = 0
    output_bytes: int = 0
    forward_ms: float | None = None
    backward_ms: float | None = None


class LayerFailure(Exception):
    """The forward pass raised in ``stats`` (the innermost module running), called with ``input_shape``."""

    def __init__(self, stats: ModuleStats, input_shape: list, error: BaseException):
        super().__init__(str(error))
        self.stats, self.input_shape, self.error = stats, input_shape, error


def module_stats(model: nn.Module) -> dict[int, ModuleStats]:
    """A :class:`ModuleStats` per module (keyed by ``id``), parameters filled, each parameter counted once."""
    stats, seen_params = {}, set()
    for name, module in model.named_modules():
        entry = ModuleStats(name=name, type=type(module).__name__, depth=name.count(".") + 1 if name else 0,
                            has_children=next(module.children(), None) is not None)
        for param in module.parameters(recurse=False):
            if id(param) in seen_params:
                continue  # a parameter shared by two modules belongs to the first
            seen_params.add(id(param))
            if param.requires_grad:
                entry.params_trainable += param.numel()
            else:
                entry.params_frozen += param.numel()
        stats[id(module)] = entry
    return stats


def shapes_of(value) -> list:
    """Shape of a tensor, or the shapes of the tensors in a (nested) tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [shapes_of(v) for v in value if isinstance(v, (torch.Tensor, list, tuple, dict))]
    return []


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


def nodes_of(value) -> list:
    """The autograd nodes that made the tensors in ``value`` (none for leaves and tensors without grad)."""
    return [t.grad_fn for t in tensors_in(value) if t.grad_fn is not None]


def graph_nodes(starts: list, stop: Container = ()):
    """Each autograd node behind ``starts`` once (through ``next_functions``), not going past ``stop``."""
    seen, todo = set(), list(starts)
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        yield node
        todo.extend(next_node for next_node, _ in node.next_functions)


class _NodeOwners(TorchFunctionMode):
    """Gives the autograd nodes each torch function creates to the module running it (``stack.current``):
    the nodes between the function's outputs and its tensor arguments, read before it runs (an in-place
    op gives its argument a new node). Nodes made outside every module stay unowned (the model's row)."""

    def __init__(self, stack: ModuleStack):
        super().__init__()
        self.stack = stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = nodes_of((args, kwargs))
        out = func(*args, **kwargs)
        owner, owned = self.stack.current, self.stack.owner
        if owner is not None:
            for node in graph_nodes(nodes_of(out), stop=_Either(set(inputs), owned)):
                owned[node] = owner
        return out


class _Either:
    """``in`` either of two containers, without building their union."""

    def __init__(self, first: Container, second: Container):
        self.first, self.second = first, second

    def __contains__(self, item) -> bool:
        return item in self.first or item in self.second


class ModuleStack:
    """Which of the model's modules are running forward, innermost last; and which module owns each node."""

    def __init__(self, stats: dict[int, ModuleStats]):
        self.stats = stats
        self.running: list[tuple[ModuleStats, list]] = []  # (module, input shape)
        self.owner: dict = {}  # autograd node -> the module whose forward created it
        self.in_backward = False  # set by whoever runs backward
        self.backward_owner: ModuleStats | None = None  # the module whose node is running in backward

    @contextlib.contextmanager
    def hooks(self):
        pre = register_module_forward_pre_hook(self._enter)
        post = register_module_forward_hook(self._leave)
        try:
            with _NodeOwners(self):
                yield self
        finally:
            pre.remove()
            post.remove()

    @property
    def current(self) -> ModuleStats | None:
        return self.running[-1][0] if self.running else None

    def _enter(self, module, args):
        entry = self.stats.get(id(module))
        if entry is not None:
            entry.calls += 1
            self.running.append((entry, shapes_of(args)))

    def _leave(self, module, args, output):
        entry = self.stats.get(id(module))
        if entry is None or not self.running or self.running[-1][0] is not entry:
            return
        _, input_shape = self.running.pop()
        if entry.calls == 1:
            entry.output_shape, entry.input_shape = shapes_of(output), input_shape
            entry.output_bytes = sum(t.numel() * t.element_size() for t in tensors_in(output))

    def owner_of_node(self, node, root: ModuleStats) -> ModuleStats:
        return self.owner.get(node, root) if node is not None else root

    @contextlib.contextmanager
    def backward(self, outputs: list, root: ModuleStats):
        """While backward of ``outputs`` runs: ``in_backward`` on, and ``backward_owner`` the module whose
        node is running (a pre-hook on every node of the graph sets it)."""
        handles = [node.register_prehook(partial(self._node_starts, self.owner_of_node(node, root)))
                   for node in graph_nodes(nodes_of(outputs))]  # fmt: skip
        self.in_backward = True
        try:
            yield
        finally:
            self.in_backward, self.backward_owner = False, None
            for handle in handles:
                handle.remove()

    def _node_starts(self, owner: ModuleStats, grad_outputs) -> None:
        self.backward_owner = owner


class StepCounter(TorchDispatchMode):
    """Charges every aten op of the step to a module: FLOPs and other ops in forward, FLOPs in backward."""

    def __init__(self, stack: ModuleStack, root: ModuleStats):
        super().__init__()
        self.stack, self.root = stack, root

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not is_counted(func) and func is not torch.ops.prim.device.default:
            with self:  # as FlopCounterMode: count the parts of ops it has no formula for
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        out = fast_meta_outputs(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        self._charge(func, args, kwargs, out)
        return out

    def _charge(self, func, args, kwargs, out) -> None:
        if self.stack.in_backward:
            owner = self.stack.backward_owner or self.root
            owner.backward_flops += matmul_flops(func, args, kwargs, out)
            return
        owner = self.stack.current
        if owner is not None:  # ops outside the model (the loss) are not the model's
            owner.flops += matmul_flops(func, args, kwargs, out)
            owner.other_ops += other_ops(func, args, out)


class SavedActivations:
    """Counts the bytes autograd keeps for backward, per module, each storage once; parameters excluded."""

    def __init__(self, stack: ModuleStack, model: nn.Module):
        self.stack = stack
        # storages are told apart by the identity of their Python object (torch keeps one per storage;
        # data_ptr() is 0 for every meta tensor); kept referenced here, so that no id is reused meanwhile
        self._keep = [t.untyped_storage() for t in [*model.parameters(), *model.buffers()]]
        self.excluded = {id(storage) for storage in self._keep}
        self.seen: set[int] = set()

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        owner = self.stack.current
        if owner is None or self.stack.in_backward:
            return tensor
        storage = tensor.untyped_storage()
        if id(storage) not in self.excluded and id(storage) not in self.seen:
            self.seen.add(id(storage))
            self._keep.append(storage)
            owner.activation_bytes += storage.nbytes()
        return tensor


def trace_step(model: nn.Module, example: torch.Tensor) -> list[ModuleStats]:
    """Run forward and backward of ``model(example)`` and return what each module did, in module order.

    Raises :class:`LayerFailure` naming the innermost module running when the forward pass fails.
    """
    stats = module_stats(model)
    root = stats[id(model)]
    stack = ModuleStack(stats)
    saved = SavedActivations(stack, model)
    with torch.enable_grad(), stack.hooks(), StepCounter(stack, root):
        with saved.hooks():
            try:
                output = model(example)
            except Exception as error:
                failing, input_shape = stack.running[-1] if stack.running else (root, [])
                raise LayerFailure(failing, input_shape or [list(example.shape)], error) from error
        outputs = [t for t in tensors_in(output) if t.requires_grad and t.is_floating_point()]
        if outputs:
            with stack.backward(outputs, root):
                torch.autograd.backward([t.sum() for t in outputs])
    return list(stats.values())
