"""``--measure``: real training steps on a device, for measured peak memory and per-layer times.

Everything runs on a deep copy of the model (moved to the device and dtype), so the user's weights, gradients,
mode and hooks stay as they were.

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` over two optimizer steps, minus what the process
held before the copy was made. On the CPU there is no allocator counter, so the bytes of every live tensor
storage are tracked in-process: a ``TorchDispatchMode`` notes each op's output storage and a ``weakref``
finaliser notes when it is freed; the weights, buffers and input batch are counted from the start. This is
exact for tensors and leaves out the allocator's caching and the kernels' private workspaces.

Times. Forward: global module hooks take the clock when each module's forward starts and ends; a module's
time is its own (its submodules' subtracted). Backward: hooks before and after each autograd node, the node
charged to the module whose forward created it (noted as it is created, as in :mod:`.trace`); the
accumulation into a parameter's ``.grad`` goes to the innermost module using the parameter. On CUDA every
hook synchronises first. The hooks' own bookkeeping (a few microseconds per torch function) is inside the
times. The first step is a warm-up; each figure is the median of ``repeats`` steps.
"""

from __future__ import annotations

import copy
import statistics
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import ConfigError
from ..runtime import resolve_device
from .trace import ModuleStack, ModuleStats, graph_nodes, module_stats, tensors_in

OPTIMIZERS = ("sgd", "sgd_momentum", "adam")


@dataclass
class Measurement:
    device: str
    optimizer: str
    repeats: int
    peak_bytes: int
    peak_method: str
    forward_ms: float  # median of the whole forward pass
    backward_ms: float
    layer_forward_ms: dict[str, float] = field(default_factory=dict)  # module name -> median own time
    layer_backward_ms: dict[str, float] = field(default_factory=dict)


def measure_step(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device, train: bool,
                 repeats: int, optimizer: str, modules: list[ModuleStats]) -> Measurement:
    """Measure ``model`` on a batch of ``shape``; also fills ``forward_ms``/``backward_ms`` of ``modules``."""
    device = _resolve_device(device)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise ConfigError("measuring needs a model with real weights; this one was built on the meta device")
    # the random input and dropout masks must not move the caller's random streams
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        twin = copy.deepcopy(model).to(device=device, dtype=dtype).train(train)
        twin.zero_grad(set_to_none=True)
        example = torch.randn(shape, device=device, dtype=dtype)
        peak, method = _peak_bytes(twin, example, optimizer, before)
        forward, backward, per_layer_fwd, per_layer_bwd = _timed_steps(twin, example, repeats)
    for module in modules:
        module.forward_ms = per_layer_fwd.get(module.name)
        module.backward_ms = per_layer_bwd.get(module.name)
    return Measurement(str(device), optimizer, repeats, peak, method, forward, backward, per_layer_fwd,
                       per_layer_bwd)


def _resolve_device(device) -> torch.device:
    device = resolve_device(device)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--measure supports cpu and cuda devices; got {device.type!r}")
    return device


# ------------------------------------------------------------------------------------------------
# Peak memory


def _peak_bytes(twin: nn.Module, example: torch.Tensor, optimizer: str, before: int) -> tuple[int, str]:
    opt = _optimizer(twin, optimizer)
    if example.device.type == "cuda":
        torch.cuda.synchronize(example.device)
        torch.cuda.reset_peak_memory_stats(example.device)
        _optimizer_steps(twin, example, opt, steps=2)
        torch.cuda.synchronize(example.device)
        peak = torch.cuda.max_memory_allocated(example.device) - before
        return peak, "torch.cuda.max_memory_allocated over two optimizer steps"
    with LiveTensorBytes([*twin.parameters(), *twin.buffers(), example]) as tracker:
        _optimizer_steps(twin, example, opt, steps=2)
    return tracker.peak, ("largest sum of live tensor storages over two optimizer steps, tracked in-process "
                          "(allocator caching and kernel workspaces not included)")


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        params = [nn.Parameter(torch.zeros(()))]  # a frozen model: nothing to step, keep the API happy
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-4)
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9 if name == "sgd_momentum" else 0.0)


def _optimizer_steps(model: nn.Module, example: torch.Tensor, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = _loss(model(example))
        if loss is not None:
            loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def _loss(output) -> torch.Tensor | None:
    parts = [t.float().sum() for t in tensors_in(output) if t.requires_grad and t.is_floating_point()]
    return torch.stack(parts).sum() if parts else None


class LiveTensorBytes(TorchDispatchMode):
    """The peak of the bytes held by live tensor storages while the mode is active."""

    def __init__(self, alive: list[torch.Tensor]):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        for tensor in alive:
            self._track(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tensors_in(out):
            self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)  # torch keeps one Python object per storage; its id is free again only after _free
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)  # fires when the storage itself is freed

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


# ------------------------------------------------------------------------------------------------
# Times


class _TimedStack(ModuleStack):
    """A :class:`ModuleStack` that also clocks each module's own forward time."""

    def __init__(self, stats: dict[int, ModuleStats], sync):
        super().__init__(stats)
        self.sync = sync
        self.clock: list[list[float]] = []  # per running module: [start, time in its submodules]
        self.own_ms: dict[str, float] = {}

    def _enter(self, module, args):
        super()._enter(module, args)
        if id(module) in self.stats:
            self.sync()
            self.clock.append([time.perf_counter(), 0.0])

    def _leave(self, module, args, output):
        entry = self.stats.get(id(module))
        running = self.running and self.running[-1][0] is entry
        super()._leave(module, args, output)
        if entry is None or not running:
            return
        self.sync()
        start, inner = self.clock.pop()
        elapsed = time.perf_counter() - start
        if self.clock:
            self.clock[-1][1] += elapsed
        self.own_ms[entry.name] = self.own_ms.get(entry.name, 0.0) + 1e3 * (elapsed - inner)


def _timed_steps(twin: nn.Module, example: torch.Tensor, repeats: int):
    def sync():
        if example.device.type == "cuda":
            torch.cuda.synchronize(example.device)

    forward, backward, layer_fwd, layer_bwd = [], [], [], []
    for rep in range(repeats + 1):
        fwd, bwd, own_fwd, own_bwd = _timed_step(twin, example, sync)
        if rep:  # the first step is a warm-up
            forward.append(fwd)
            backward.append(bwd)
            layer_fwd.append(own_fwd)
            layer_bwd.append(own_bwd)
    return statistics.median(forward), statistics.median(backward), _medians(layer_fwd), _medians(layer_bwd)


def _timed_step(twin: nn.Module, example: torch.Tensor, sync):
    twin.zero_grad(set_to_none=True)
    stats = module_stats(twin)
    root = stats[id(twin)]
    stack = _TimedStack(stats, sync)
    with stack.hooks():
        sync()
        start = time.perf_counter()
        loss = _loss(twin(example))
        sync()
        forward_ms = 1e3 * (time.perf_counter() - start)
    own_bwd: dict[str, float] = {}
    backward_ms = 0.0
    if loss is not None:
        _clock_nodes(loss.grad_fn, stack, root, own_bwd, sync)
        start = time.perf_counter()
        loss.backward()
        sync()
        backward_ms = 1e3 * (time.perf_counter() - start)
    twin.zero_grad(set_to_none=True)
    return forward_ms, backward_ms, stack.own_ms, own_bwd


def _clock_nodes(first, stack: ModuleStack, root: ModuleStats, own_ms: dict[str, float], sync) -> None:
    """Hook every node of the graph behind ``first``: its run time goes to the module that created it."""
    for node in graph_nodes([first]):
        clock = _NodeClock(stack.owner_of_node(node, root).name, own_ms, sync)
        node.register_prehook(clock.start)
        node.register_hook(clock.stop)


class _NodeClock:
    """Hooks for one autograd node (they live as long as the step's graph): add its run time to its module."""

    def __init__(self, name: str, own_ms: dict[str, float], sync):
        self.name, self.own_ms, self.sync = name, own_ms, sync
        self.started = 0.0

    def start(self, grad_outputs):
        self.sync()
        self.started = time.perf_counter()

    def stop(self, grad_inputs, grad_outputs):
        self.sync()
        self.own_ms[self.name] = self.own_ms.get(self.name, 0.0) + 1e3 * (time.perf_counter() - self.started)


def _medians(per_step: list[dict[str, float]]) -> dict[str, float]:
    names = {name for step in per_step for name in step}
    return {name: statistics.median(step.get(name, 0.0) for step in per_step) for name in sorted(names)}
