"""Freed host memory is reused within a CPU run: a step's activations stop page-faulting after a few steps.

The allocator setting is process-wide and leaves its heap behind, so each case runs in a fresh interpreter.
"""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A "step" allocates, fills and frees blocks of these sizes (MiB), like a training step's activations;
# all but the smallest are above glibc's largest mmap threshold (32 MiB).
STEP = textwrap.dedent("""
    import json, resource, sys, torch
    from classicnets.training import host_memory

    SIZES_MIB = (96, 40, 8, 64)
    PAGES = sum(SIZES_MIB) * 2**20 // resource.getpagesize()

    def step_faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.empty(n * 2**20, dtype=torch.uint8).fill_(1) for n in SIZES_MIB]
        del blocks
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / PAGES

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    result = {}
    for name, case in CASES:
        result[name] = case()
    print(json.dumps(result))
""")


def run_cases(cases: str) -> dict:
    code = STEP.replace("for name, case in CASES:", cases + "\nfor name, case in CASES:")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_by_default_every_step_faults_its_blocks_in_afresh():
    faults = run_cases('CASES = [("default", lambda: [step_faults() for _ in range(6)])]')["default"]
    assert min(faults) > 0.9, faults


def test_inside_the_block_steps_reuse_the_freed_heap():
    faults = run_cases(textwrap.dedent("""
        def inside():
            with host_memory.reused_host_memory():
                return [step_faults() for _ in range(16)]
        CASES = [("inside", inside)]
    """))["inside"]
    assert faults[0] > 0.9, faults  # the first step grows the heap
    # The heap then grows a few more times while its free blocks settle into a layout that fits a whole
    # step (up to 7 steps here, depending on where small allocations land); after that steps stop faulting.
    settled = faults[8:]
    quiet = sum(f < 0.05 for f in settled)
    assert quiet >= len(settled) - 2, f"still faulting after {len(faults)} steps: {faults}"


def test_leaving_the_block_returns_the_heap_to_the_kernel():
    result = run_cases(textwrap.dedent("""
        def kept_then_released():
            with host_memory.reused_host_memory():
                for _ in range(4):
                    step_faults()
                kept = rss()
            return kept - rss()
        CASES = [("returned", kept_then_released)]
    """))
    assert result["returned"] > 100 * 2**20, result  # most of the 208 MiB of free heap


def test_disabled_changes_nothing():
    faults = run_cases(textwrap.dedent("""
        def disabled():
            with host_memory.reused_host_memory(enabled=False):
                return [step_faults() for _ in range(4)]
        CASES = [("disabled", disabled)]
    """))["disabled"]
    assert min(faults) > 0.9, faults


def test_nested_blocks_release_only_when_the_outermost_ends():
    result = run_cases(textwrap.dedent("""
        def nested():
            with host_memory.reused_host_memory():
                for _ in range(12):
                    step_faults()
                with host_memory.reused_host_memory():  # e.g. an evaluation inside a training run
                    step_faults()
                    before_inner_end = rss()
                trimmed = before_inner_end - rss()
                return {"trimmed": trimmed, "faults": [step_faults() for _ in range(3)]}
        CASES = [("nested", nested)]
    """))["nested"]
    # Had the inner block released, its end would hand the free heap (200 MiB or more) back to the kernel,
    # and the next step would fault all of its pages in afresh.
    assert result["trimmed"] < 16 * 2**20, f"the inner block's end trimmed the heap: {result}"
    assert max(result["faults"]) < 0.9, f"the inner block's end restored mmap'd blocks: {result}"
