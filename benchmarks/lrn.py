"""What the written-out LRN buys: classicnets.models.lrn.PaperLRN against torch's composite LRN.

torch.nn.functional.local_response_norm sums each window with avg_pool3d; PaperLRN sums it with slice
additions and has its gradient written out (see its docstring). Both run in float32 whatever the autocast
dtype, as the paper's normaliser needs. Measured, interleaved over ``--reps`` repetitions (medians):

- each LRN of the paper's AlexNet alone, forward + backward, at its shape (norm1: 96 maps of 55x55, norm2:
  256 maps of 27x27, both in two towers), bf16 input in channels_last as the Trainer's CPU step feeds it;
- the paper AlexNet's whole training step (227 px, 1 channel, as in the zoo table) with either LRN, in
  the Trainer's step configurations (fp32, and bf16 autocast + channels_last + kept host memory on a CPU).

    python benchmarks/lrn.py                 # about two minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import classicnets
import common
from classicnets.models.lrn import PaperLRN
from classicnets.runtime import reused_host_memory
from train_step import StepConfig, StepRunner


class CompositeLRN(nn.Module):
    """What PaperLRN replaced: torch's LRN on each tower's maps, in float32, in the input's dtype."""

    def __init__(self, lrn: PaperLRN):
        super().__init__()
        self.lrn = lrn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrn = self.lrn
        with torch.autocast(x.device.type, enabled=False):
            parts = [F.local_response_norm(part.float(), lrn.size, lrn.alpha, lrn.beta, lrn.k)
                     for part in x.chunk(lrn.groups, dim=1)]
        return torch.cat(parts, dim=1).to(x.dtype)


def with_composite_lrn(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, child in list(model.features.named_children()):
        if isinstance(child, PaperLRN):
            setattr(model.features, name, CompositeLRN(child))
    return model


def layer_seconds(lrn: nn.Module, x: torch.Tensor, device: torch.device, steps: int) -> float:
    x = x.detach().requires_grad_()
    upstream = torch.ones_like(x)
    common.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        lrn(x).backward(upstream)
    common.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure_layers(args, device: torch.device) -> list[dict]:
    shapes = {"norm1": (96, 55), "norm2": (256, 27)}
    ours = PaperLRN(5, alpha=5e-4, beta=0.75, k=2.0, groups=2)
    arms = {"classicnets": ours, "torch composite": CompositeLRN(ours)}
    rows = []
    for layer, (channels, side) in shapes.items():
        x = torch.randn(args.batch_size, channels, side, side, device=device).relu().mul(20)
        x = x.bfloat16().contiguous(memory_format=torch.channels_last)
        times = {arm: [] for arm in arms}
        for module in arms.values():
            layer_seconds(module, x, device, 1)  # warm-up
        for _ in range(args.reps):
            for arm, module in arms.items():
                times[arm].append(layer_seconds(module, x, device, args.steps))
        for arm in arms:
            rows.append({"layer": layer, "shape": [args.batch_size, channels, side, side], "lrn": arm,
                         "ms": common.median(times[arm]) * 1e3})
    return rows


def measure_step(args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    ours = classicnets.create_model("alexnet", num_classes=10, in_channels=1)
    models = {"classicnets": ours, "torch composite": with_composite_lrn(ours)}
    images = torch.rand(args.batch_size, 1, 227, 227)
    labels = torch.randint(0, 10, (args.batch_size,))
    configs = ["fp32", "bf16+cl+reuse"] if device.type == "cpu" else ["fp32", "bf16+cl"]
    runners = {(arm, c): StepRunner(model, StepConfig.parse(c), images, labels, device, None)
               for arm, model in models.items() for c in configs}
    for runner in runners.values():
        runner.run(1)  # warm-up
    times = {key: [] for key in runners}
    for _ in range(args.reps):
        for key, runner in runners.items():
            runner.settle()
            times[key].append(runner.run(args.steps) / args.steps)
    rows = []
    for arm, config in runners:
        step_s = common.median(times[arm, config])
        rows.append({"model": "alexnet", "lrn": arm, "config": config, "step_ms": step_s * 1e3,
                     "images_per_s": args.batch_size / step_s})
    return rows


def render(payload: dict) -> str:
    m, s = payload["machine"], payload["settings"]
    layer_ms = {(r["layer"], r["lrn"]): r["ms"] for r in payload["layers"]}
    shapes = {r["layer"]: r["shape"] for r in payload["layers"]}
    layer_rows = []
    for layer, shape in shapes.items():
        theirs, ours = layer_ms[layer, "torch composite"], layer_ms[layer, "classicnets"]
        layer_rows.append([layer, str(shape), common.fmt(theirs), common.fmt(ours), f"{theirs / ours:.2f}x"])
    steps = {(r["config"], r["lrn"]): r for r in payload["steps"]}
    step_rows = []
    for config in dict.fromkeys(r["config"] for r in payload["steps"]):
        theirs, ours = steps[config, "torch composite"], steps[config, "classicnets"]
        step_rows.append([config, common.fmt(theirs["images_per_s"]), common.fmt(ours["images_per_s"]),
                          f"{theirs['step_ms'] / ours['step_ms']:.2f}x"])
    return (
        f"LRN on {common.device_label(m)}, {m['date_utc']}; batch {s['batch_size']}, "
        f"medians of {s['reps']} interleaved reps x {s['steps']} steps.\n\n"
        "Forward + backward of one LRN of the paper's AlexNet (bf16 input, channels_last, two towers), "
        "ms:\n\n"
        + common.markdown_table(["layer", "input", "torch composite", "classicnets", "speed-up"], layer_rows)
        + "\n\nThe paper AlexNet's training step (227 px, 1 channel), images/s:\n\n"
        + common.markdown_table(["config", "torch composite LRN", "classicnets LRN", "speed-up"], step_rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per rep")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="lrn", help="result name under benchmarks/results/")
    args = p.parse_args(argv)
    device = common.resolve_device(args.device)
    common.step_benchmark_settings(device)
    with reused_host_memory(enabled=device.type == "cpu"):
        layers = measure_layers(args, device)
    payload = {"benchmark": "lrn", "machine": common.machine_info(device),
               "settings": {"batch_size": args.batch_size, "steps": args.steps, "reps": args.reps},
               "layers": layers, "steps": measure_step(args, device)}
    common.publish(args.out, payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
