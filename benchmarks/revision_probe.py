"""One round of compare_revisions.py: the throughput of whichever classicnets is first on the path.

compare_revisions.py runs this file in a fresh process per revision and round, with that revision's ``src``
on PYTHONPATH, so both revisions run the very same measuring code. It therefore uses only the public API
that every revision has (``classicnets.train``, ``classicnets.create_model``) and nothing from
``benchmarks/common.py``, which imports modules an older revision may lack. It prints one JSON object.

    PYTHONPATH=src python benchmarks/revision_probe.py --probes trainer:quick:16384 step:googlenet:96
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
import time

import torch
import torch.nn.functional as F

import classicnets

STEP_BATCH = 32  # the CPU batch of train_step.py
STEP_WARMUP, STEP_COUNT = 3, 6
# glibc's mallopt parameters (<malloc.h>), for the Trainer's CPU host-memory policy in the step probe
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def trainer_images_per_s(recipe: str, subset: int, data_dir: str | None) -> float:
    """One epoch of ``recipe`` through the Trainer on ``subset`` Fashion-MNIST images: the training phase's
    images/s from the run's history (loading and the device-side transform included, evaluation not)."""
    with tempfile.TemporaryDirectory() as out:
        history = classicnets.train(
            recipe=recipe, dataset="fashion-mnist", data_dir=data_dir, subset=subset, test_subset=256,
            epochs=1, out=out, overwrite=True, progress=False,
        )  # fmt: skip
    return history[-1]["images_per_sec"]


def keep_host_memory() -> None:
    """Freed memory kept for the next step, as the Trainer does on the CPU. Written out here rather than
    imported from ``classicnets.runtime``, which an older revision lacks: glibc's default unmaps large
    blocks and maps them again each step, and how many page faults that costs varied from process to
    process by up to 30% in the paper AlexNet's step, more than the differences this probe looks for."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, -1)  # read as a size_t: never trim
    except (OSError, AttributeError):  # not glibc: the allocator's own policy, the same for both revisions
        pass


def step_images_per_s(model_name: str, side: int) -> float:
    """Forward, cross-entropy, backward and SGD on one fixed batch, bf16 autocast and channels_last, freed
    memory kept (the Trainer's CPU step): images/s over ``STEP_COUNT`` steps after ``STEP_WARMUP``."""
    keep_host_memory()
    torch.manual_seed(0)
    model = classicnets.create_model(model_name, num_classes=10, in_channels=1)
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.rand(STEP_BATCH, 1, side, side).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (STEP_BATCH,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(STEP_WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(STEP_COUNT):
        step()
    return STEP_BATCH * STEP_COUNT / (time.perf_counter() - start)


def measure(probe: str, data_dir: str | None) -> float:
    kind, name, size = probe.split(":")
    if kind == "trainer":
        return trainer_images_per_s(name, int(size), data_dir)
    if kind == "step":
        return step_images_per_s(name, int(size))
    raise SystemExit(f"error: unknown probe kind {kind!r} in {probe!r}; expected trainer:... or step:...")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probes", nargs="+", required=True,
                   help="trainer:RECIPE:SUBSET (one epoch), step:MODEL:SIDE (the bf16+cl step)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST is (default: the usual places)")
    args = p.parse_args(argv)
    print(json.dumps({probe: measure(probe, args.data_dir) for probe in args.probes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
