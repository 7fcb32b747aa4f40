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
PRELUDE = textwrap.dedent("""
    import json, resource, sys, torch
    from classicnets import runtime as host_memory

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
""")


def run_case(body: str):
    """Run ``body`` as a function in a fresh interpreter (with ``step_faults``, ``rss`` and ``host_memory``
    at hand) and return what it returns."""
    case = "def case():\n" + textwrap.indent(textwrap.dedent(body), "    ")
    code = f"{PRELUDE}\n{case}\nprint(json.dumps(case()))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_by_default_every_step_faults_its_blocks_in_afresh():
    faults = run_case("return [step_faults() for _ in range(6)]")
    assert min(faults) > 0.9, faults


def test_inside_the_block_steps_reuse_the_freed_heap():
    faults = run_case("""
        with host_memory.reused_host_memory():
            return [step_faults() for _ in range(16)]
    """)
    assert faults[0] > 0.9, faults  # the first step grows the heap
    # The heap then grows a few more times while its free blocks settle into a layout that fits a whole
    # step (up to 7 steps here, depending on where small allocations land); after that steps stop faulting.
    settled = faults[8:]
    quiet = sum(f < 0.05 for f in settled)
    assert quiet >= len(settled) - 2, f"still faulting after {len(faults)} steps: {faults}"


def test_leaving_the_block_returns_the_heap_to_the_kernel():
    returned = run_case("""
        with host_memory.reused_host_memory():
            for _ in range(4):
                step_faults()
            kept = rss()
        return kept - rss()
    """)
    assert returned > 100 * 2**20, returned  # most of the 208 MiB of free heap


def test_disabled_changes_nothing():
    faults = run_case("""
        with host_memory.reused_host_memory(enabled=False):
            return [step_faults() for _ in range(4)]
    """)
    assert min(faults) > 0.9, faults


def test_nested_blocks_release_only_when_the_outermost_ends():
    result = run_case("""
        with host_memory.reused_host_memory():
            for _ in range(12):
                step_faults()
            with host_memory.reused_host_memory():  # e.g. an evaluation inside a training run
                step_faults()
                before_inner_end = rss()
            trimmed = before_inner_end - rss()
            return {"trimmed": trimmed, "faults": [step_faults() for _ in range(3)]}
    """)
    # Had the inner block released, its end would hand the free heap (200 MiB or more) back to the kernel,
    # and the next step would fault all of its pages in afresh.
    assert result["trimmed"] < 16 * 2**20, f"the inner block's end trimmed the heap: {result}"
    assert max(result["faults"]) < 0.9, f"the inner block's end restored mmap'd blocks: {result}"
