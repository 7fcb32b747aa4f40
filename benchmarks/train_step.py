"""Training-step throughput (images/s) and model-FLOPs utilisation (MFU) of the zoo's models.

One training step = forward, cross-entropy, backward, SGD update, on a fixed synthetic batch already on the
device (so the loader is not measured here; see loader_throughput.py and time_to_accuracy.py). Each model
runs at its recipe's input size (Fashion-MNIST: 1 channel, 10 classes) under every asked configuration:

    fp32 / bf16 (torch.autocast)  x  channels_last off / on  x  torch.compile off / on

and, on the CPU, ``+reuse``: freed host memory kept for the next step (classicnets.runtime's policy, what the
Trainer does on the CPU) instead of glibc's default of unmapping large blocks and faulting them in again.
It is a process-wide allocator setting, switched at the start of each timed repetition.

The configurations of one model are measured interleaved (rep 1 of every config, then rep 2, ...) and the
median over repetitions is reported, so a burst of load from other processes hits all of them alike.

MFU = (training FLOPs per step, counted with torch.utils.flop_counter.FlopCounterMode over forward and
backward; 1 multiply-add = 2 FLOPs) / (median step time) / (peak FLOP/s). The peak is the best rate of a
large square matmul in the same dtype measured on this machine in this run (common.measure_matmul_peak):
fp32 configurations divide by the fp32 matmul peak, bf16 ones by the bf16 (AMX / tensor core) peak.

    python benchmarks/train_step.py --quick                  # a few minutes on 2 CPU cores
    python benchmarks/train_step.py --models 'alexnet*' --configs all
    python benchmarks/train_step.py --device cuda --batch-size 128 --steps 20 --compile-mode max-autotune
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import classicnets
import common
from classicnets.runtime import keep_host_memory, release_host_memory

# Input side of each model under its Fashion-MNIST recipe: d2l chapter 8 trains AlexNet, VGG and NiN at 224,
# GoogLeNet and ResNet at 96; the other models run at their own default size.
D2L_INPUT_SIDE = {"alexnet_d2l": 224, "vgg*": 224, "nin*": 224, "googlenet*": 96, "resnet*": 96}
QUICK_MODELS = ("alexnet_d2l",)  # --quick: every asked config on these
# --quick: one model per family and size class, at the slowest and the fastest eager config
QUICK_ZOO = ("alexnet", "alexnet_owt", "alexnet_28", "vgg11", "nin", "googlenet", "resnet18", "resnet50")
QUICK_OTHER_CONFIGS = ("fp32", "bf16+cl+reuse")


@dataclass(frozen=True)
class StepConfig:
    precision: str  # "fp32" or "bf16" (autocast)
    channels_last: bool
    compiled: bool
    reuse_memory: bool = False  # host memory kept for reuse (the Trainer's CPU setting)

    @property
    def name(self) -> str:
        flags = (("cl", self.channels_last), ("compile", self.compiled), ("reuse", self.reuse_memory))
        return "+".join([self.precision] + [flag for flag, on in flags if on])

    @classmethod
    def parse(cls, name: str) -> StepConfig:
        parts = name.split("+")
        if parts[0] not in ("fp32", "bf16") or not set(parts[1:]) <= {"cl", "compile", "reuse"}:
            raise SystemExit(
                f"error: unknown config {name!r}; expected fp32|bf16 with optional +cl, +compile, +reuse"
            )
        return cls(parts[0], "cl" in parts[1:], "compile" in parts[1:], "reuse" in parts[1:])


GRID_CONFIGS = tuple(
    StepConfig(p, cl, c).name for c in (False, True) for p in ("fp32", "bf16") for cl in (False, True)
)
TRAINER_CPU_CONFIG = "bf16+cl+reuse"  # what `classicnets train --precision bf16 --channels-last` runs
ALL_CONFIGS = (*GRID_CONFIGS, TRAINER_CPU_CONFIG)


def input_side(name: str) -> int:
    for pattern, side in D2L_INPUT_SIDE.items():
        if fnmatch.fnmatchcase(name, pattern):
            return side
    return classicnets.model_info(name).default_input[-1]


class StepRunner:
    """One model copy, its optimizer and a fixed batch for one configuration; ``run(n)`` does n steps."""

    def __init__(
        self,
        base: nn.Module,
        config: StepConfig,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        compile_mode: str | None,
    ):
        self.config, self.device = config, device
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = copy.deepcopy(base).to(device, memory_format=memory_format).train()
        self.images = images.to(device).contiguous(memory_format=memory_format)
        self.labels = labels.to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)  # d2l's optimizer
        self.forward = torch.compile(self.model, mode=compile_mode) if config.compiled else self.model
        self.autocast = config.precision == "bf16"

    def step(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss  # left on the device: no host sync inside the timed loop

    def settle(self) -> None:
        """Switch the host allocator to this config's setting and take one untimed step under it (the heap
        is not trimmed on the way back), so that no config pays for the previous one's setting."""
        if self.device.type == "cpu":
            keep_host_memory() if self.config.reuse_memory else release_host_memory(trim=False)
            self.step()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps, with the device drained only at the ends."""
        common.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        common.synchronize(self.device)
        return time.perf_counter() - start


def measure_model(
    name: str, configs: list[StepConfig], args, device: torch.device, peaks: dict
) -> list[dict]:
    side = input_side(name)
    torch.manual_seed(0)
    base = classicnets.create_model(name, num_classes=10, in_channels=1)
    images = torch.rand(args.batch_size, 1, side, side)
    labels = torch.randint(0, 10, (args.batch_size,))
    flops = common.count_train_flops(copy.deepcopy(base).to(device), images.to(device), labels.to(device))
    params = sum(p.numel() for p in base.parameters())

    runners, warmup_s = [], {}
    for config in configs:
        runner = StepRunner(base, config, images, labels, device, args.compile_mode)
        warmup_s[config.name] = common.time_call(lambda r=runner: r.run(args.warmup), device)  # incl. compile
        runners.append(runner)
    times = {c.name: [] for c in configs}
    shares = {c.name: [] for c in configs}
    faults = {c.name: [] for c in configs}
    for _ in range(args.reps):
        for runner in runners:
            runner.settle()
            with common.CpuShare() as share:
                times[runner.config.name].append(runner.run(args.steps) / args.steps)
            shares[runner.config.name].append(share.value)
            faults[runner.config.name].append(share.faults / args.steps)

    rows = []
    for config in configs:
        step_s = common.median(times[config.name])
        peak = peaks[config.precision]["flops_per_s"]
        rows.append(
            {
                "model": name,
                "config": config.name,
                "input": [1, side, side],
                "batch_size": args.batch_size,
                "params": params,
                "train_gflop_per_image": flops["train"] / args.batch_size / 1e9,
                "step_ms": step_s * 1e3,
                "images_per_s": args.batch_size / step_s,
                "achieved_tflop_per_s": flops["train"] / step_s / 1e12,
                "mfu": flops["train"] / step_s / peak,
                "peak_dtype": config.precision,
                "warmup_s": warmup_s[config.name],
                "step_ms_all_reps": [t * 1e3 for t in times[config.name]],
                "cpu_share": common.median(shares[config.name]),
                "page_faults_per_step": common.median(faults[config.name]),
            }
        )
        print(
            f"  {name:14s} {config.name:16s} {args.batch_size / step_s:8.1f} img/s  "
            f"MFU {rows[-1]['mfu'] * 100:5.1f}%  (warm-up {warmup_s[config.name]:.1f} s)",
            flush=True,
        )
    del runners
    return rows


def profile_model(name: str, config: StepConfig, args, device: torch.device) -> Path:
    """torch.profiler over a few steps of one config: the operators that take the time, written to a file."""
    from torch.profiler import ProfilerActivity, profile

    side = input_side(name)
    torch.manual_seed(0)
    base = classicnets.create_model(name, num_classes=10, in_channels=1)
    images, labels = torch.rand(args.batch_size, 1, side, side), torch.randint(0, 10, (args.batch_size,))
    runner = StepRunner(base, config, images, labels, device, args.compile_mode)
    runner.settle()
    runner.run(args.warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.run(args.steps)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=60)
    path = common.RESULTS_DIR / f"profile_{name}_{config.name.replace('+', '_')}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"{name} {config.name}, batch {args.batch_size}, {args.steps} steps, {device}\n\n{table}\n"
    )
    print(table)
    return path


def add_speedups(rows: list[dict]) -> None:
    """Each row's throughput as a ratio to the same model's fp32 eager row (how d2l runs the step)."""
    base = {r["model"]: r["images_per_s"] for r in rows if r["config"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = r["images_per_s"] / base[r["model"]] if r["model"] in base else None


def device_is_cpu(machine: dict) -> bool:
    return machine["device"] == "cpu"


def render_markdown(rows: list[dict], peaks: dict, machine: dict, settings: dict) -> str:
    table = common.markdown_table(
        ["model", "input", "config", "img/s", "x fp32", "TFLOP/s", "MFU", "CPU share", "faults/step"],
        [
            [
                r["model"],
                "x".join(map(str, r["input"])),
                r["config"],
                common.fmt(r["images_per_s"]),
                common.fmt(r["speedup_vs_fp32"], 2) if r["speedup_vs_fp32"] else "-",
                common.fmt(r["achieved_tflop_per_s"], 3),
                f"{r['mfu'] * 100:.1f}%",
                f"{r['cpu_share'] * 100:.0f}%" if device_is_cpu(machine) else "-",
                common.fmt(r["page_faults_per_step"], 0) if device_is_cpu(machine) else "-",
            ]
            for r in rows
        ],
    )
    peak_text = ", ".join(
        f"{k} {v['flops_per_s'] / 1e12:.2f} TFLOP/s (matmul n={v['matmul_n']})" for k, v in peaks.items()
    )
    return (
        f"Training-step throughput on {common.device_label(machine)}, {machine['date_utc']}; batch "
        f"{settings['batch_size']}, median of {settings['reps']} interleaved reps "
        f"x {settings['steps']} steps. "
        f"`cl` = channels_last, `compile` = torch.compile (mode {settings['compile_mode'] or 'default'}). "
        f"MFU divides by the peak measured in this run: {peak_text}. CPU share = this process's CPU time "
        f"/ (wall time x threads) over the timed steps: well under 100% means other processes held cores. "
        f"faults/step = minor page faults per step (fresh 4 KiB pages the kernel mapped and zeroed)."
        f"\n\n{table}"
    )


def select(args, device: torch.device) -> tuple[list[str], dict[str, list[StepConfig]]]:
    """The models, and the configs for each (--quick: the full grid on alexnet_d2l, two configs elsewhere)."""
    names = sorted({n for pattern in args.models for n in classicnets.list_models(pattern)})
    if not names:
        raise SystemExit(f"error: no model matches {args.models}; `classicnets models` lists them")
    everything = ALL_CONFIGS if device.type == "cpu" else GRID_CONFIGS  # +reuse is about the host's heap
    asked = everything if args.configs == ["all"] else tuple(args.configs)
    per_model = {}
    for n in names:
        chosen = asked if (not args.quick or n in QUICK_MODELS) else QUICK_OTHER_CONFIGS
        if device.type != "cpu":
            chosen = tuple(dict.fromkeys(c.replace("+reuse", "") for c in chosen))
        per_model[n] = [StepConfig.parse(c) for c in chosen]
    return names, per_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["*"], help="names or shell patterns (alexnet* vgg11)")
    p.add_argument("--configs", nargs="+", default=["all"], help=f"'all' or some of: {' '.join(ALL_CONFIGS)}")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"models {' '.join(QUICK_MODELS)} (all configs) + the zoo at {' '.join(QUICK_OTHER_CONFIGS)}"
        " with fewer steps; pass --models to change the model list",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on the CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per rep (default 20 CUDA, 3 CPU)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--profile",
        metavar="CONFIG",
        default=None,
        help="instead of timing, profile this config (e.g. bf16+cl) for each model with torch.profiler",
    )
    p.add_argument("--out", default="train_step", help="result name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.steps = args.steps or (20 if cuda else (2 if args.quick else 3))
    common.step_benchmark_settings(device)
    if args.quick and args.models == ["*"]:
        args.models = [*QUICK_MODELS, *QUICK_ZOO]
    names, per_model = select(args, device)
    if args.profile:
        for name in names:
            print(f"wrote {profile_model(name, StepConfig.parse(args.profile), args, device)}")
        return 0

    machine = common.machine_info(device)
    peaks = {
        p: common.measure_matmul_peak(device, dt)
        for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    print(
        f"peak matmul: fp32 {peaks['fp32']['flops_per_s'] / 1e12:.3f} TFLOP/s, "
        f"bf16 {peaks['bf16']['flops_per_s'] / 1e12:.3f} TFLOP/s",
        flush=True,
    )
    rows = []
    for name in names:
        rows += measure_model(name, per_model[name], args, device, peaks)
    add_speedups(rows)

    settings = {
        k: getattr(args, k) for k in ("batch_size", "steps", "reps", "warmup", "compile_mode", "quick")
    }
    settings["optimizer"] = "SGD lr 0.01 (d2l)"
    settings["data"] = "synthetic batch resident on the device (loader excluded)"
    payload = {
        "benchmark": "train_step",
        "machine": machine,
        "settings": settings,
        "peaks": peaks,
        "mfu_definition": "FlopCounterMode fwd+bwd FLOPs per step / median step time / matmul peak of "
        "the config's dtype measured in this run",
        "rows": rows,
    }
    common.publish(args.out, payload, render_markdown(rows, peaks, machine, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
