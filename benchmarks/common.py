"""Shared pieces of the benchmarks: the machine description, timers that respect CUDA's asynchrony,
the measured matmul peak that MFU divides by, FLOP counting, and the JSON + Markdown writers.

Every result file carries the device, torch version, date and settings, so a number never travels
without the conditions it was measured under.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from classicnets import runtime
from classicnets.data.sources import DEBIAN_ROOT
from classicnets.errors import ConfigError

# where results land: benchmarks/results/, or elsewhere for a trial run (the tests use a temporary folder)
RESULTS_DIR = Path(os.environ.get("CLASSICNETS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_DIR = DEBIAN_ROOT / "fashion-mnist"  # where Debian's dataset-fashion-mnist puts it


# --------------------------------------------------------------------------- machine


def resolve_device(name: str = "auto") -> torch.device:
    """classicnets.runtime.resolve_device, its error as the script's exit message."""
    try:
        return runtime.resolve_device(name)
    except ConfigError as error:
        sys.exit(f"error: --device: {error}")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: written into every result file."""
    flags = cpu_flags()
    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device": str(device),
        "cpu_model": runtime.cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_features": sorted(
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags
        ),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda_version"] = torch.version.cuda
    return info


def device_label(info: dict) -> str:
    """One line for table captions: 'Intel(R) Xeon(R) Processor, 2 cores (torch 2.13.0+cpu)'."""
    if info.get("gpu_name"):
        return f"{info['gpu_name']} (torch {info['torch_version']}, CUDA {info['cuda_version']})"
    return f"{info['cpu_model']}, {info['cpu_count']} cores (torch {info['torch_version']})"


# --------------------------------------------------------------------------- timing


def step_benchmark_settings(device: torch.device) -> None:
    """CUDA settings for timing training steps: cuDNN picks its fastest kernels, and fp32 means fp32 (the
    matmuls and cuDNN's convolutions, which default to TF32; bf16 is the fast path measured). Process-wide
    and not restored: for the benchmark scripts' own processes."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads the work done and not just the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call of fn, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class CpuShare:
    """How much of the CPU this process got while the block ran: process CPU seconds / (wall seconds x
    torch threads). Near 1.0 on an idle machine; well below it when other processes took cores, which
    on 2 cores stalls every multi-threaded kernel and shrinks the bf16 (AMX) advantage most. Also counts
    the minor page faults taken meanwhile (``faults``): fresh pages the kernel had to map and zero."""

    def __enter__(self) -> CpuShare:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall
        self.value = (time.process_time() - self._cpu) / max(wall * torch.get_num_threads(), 1e-9)
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --------------------------------------------------------------------------- FLOPs


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype, seconds: float = 1.0, sizes: tuple[int, ...] | None = None
) -> dict:
    """The best FLOP/s a large square matmul reaches here, in this run: the ceiling MFU divides by.

    A vendor's datasheet figure is not reachable on a shared 2-core VM (clock, AMX tile setup, other
    tenants), so the ceiling is measured on the same machine and in the same run as the models. Several
    sizes are tried because the best size differs by device; the maximum over repetitions is the peak.
    """
    sizes = sizes or ((8192, 16384) if device.type == "cuda" else (1024, 2048, 4096))
    best = {"flops_per_s": 0.0, "n": 0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: kernel selection, AMX tile configuration, page faults
        deadline = time.perf_counter() + seconds / len(sizes)
        while True:
            elapsed = time_call(lambda a=a, b=b: a @ b, device)
            rate = 2 * n**3 / elapsed
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "n": n}
            if time.perf_counter() > deadline:
                break
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "flops_per_s": best["flops_per_s"],
        "matmul_n": best["n"],
        "how": f"max over repeated {device.type} torch.matmul of square sizes {list(sizes)}, same run",
    }


def count_train_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Forward and forward+backward FLOPs of one training step (FlopCounterMode: 1 MAC = 2 FLOPs).

    Counted in fp32 on whatever device the model is on; autocast does not change the count.
    """
    loss_fn = nn.CrossEntropyLoss()
    with FlopCounterMode(display=False) as fwd_counter:
        logits = model(images)
    forward = fwd_counter.get_total_flops()
    loss = loss_fn(logits.float(), labels)
    with FlopCounterMode(display=False) as bwd_counter:
        loss.backward()
    backward = bwd_counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    return {"forward": forward, "backward": backward, "train": forward + backward}


# --------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, payload: dict, markdown: str, results_dir: Path | None = None
) -> tuple[Path, Path]:
    """benchmarks/results/<name>.json (everything) and <name>.md (the table people read)."""
    results_dir = results_dir or RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def publish(name: str, payload: dict, markdown: str, *, show: bool = True) -> tuple[Path, Path]:
    """Write the results (:func:`write_results`), print the table unless ``show`` is off, and say where."""
    paths = write_results(name, payload, markdown)
    if show:
        print(markdown)
    print("wrote", *paths)
    return paths


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
