"""Where and how tensors run: the device, autocast, and the host-memory policy. One home for the three, shared
by training, evaluation and the inspector; it imports only torch and the standard library.

Device. :func:`resolve_device` turns "auto", "cpu", "cuda" or "cuda:N" into a ``torch.device`` and refuses,
with the fix, a device that is not there. (Distributed training binds each process to its GPU on top of it.)

Autocast. :func:`autocast` is bfloat16 autocast on the device when asked and a no-op otherwise; weights and
optimizer state stay float32 either way.

Host memory. PyTorch's CPU allocator has no cache of its own (the CUDA one does): every activation is a
fresh ``malloc`` and every free a ``free``. glibc serves blocks above its mmap threshold (128 KiB, rising
adaptively to 32 MiB) with ``mmap`` and unmaps them on free, so each step maps its activations again and
the kernel zero-fills every page on first touch. For alexnet_d2l at batch 128 that is about 230,000 page
faults (0.9 GB) per step on the CPU; touching 0.9 GB of fresh pages costs ~200 ms more than reusing them
on the 2-core machines here, against a step of ~1.2 s.

Intel's extension for PyTorch tells users to ``LD_PRELOAD`` jemalloc or tcmalloc for this; a library
cannot do that from inside a running process, but glibc's ``mallopt`` can turn off mmap'd blocks and heap
trimming at any time. The policy: **a CPU training run (``Trainer.fit``) and a CPU evaluation
(``classicnets.evaluate``) each run inside** :func:`reused_host_memory`, which sets those two options for
the process; freed blocks then stay in the heap, and the next step, which asks for the same sizes, reuses
them. The price is that the process keeps its peak memory while the block runs; when the outermost block
ends, :func:`release_host_memory` restores glibc's settled thresholds and trims the heap. Code that runs
its own CPU loop can use the same block. On other C libraries (musl, macOS) it changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

import torch

from .errors import ConfigError

# ------------------------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N" as a ``torch.device``;
    a :class:`ConfigError` for a name torch does not know or a GPU that is not there."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asks for CUDA but torch sees no GPU here; use --device cpu")
    return resolved


# ----------------------------------------------------------------------------------------- autocast


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op; weights and optimizer state stay fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


# ------------------------------------------------------------------------------------- host memory

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# What glibc's adaptive thresholds settle at once a program has freed blocks of 32 MiB or more (as every
# training step does): mmap above the 64-bit maximum of 32 MiB, trim above twice that. Setting any of them
# by mallopt stops the adaptation, so these are restored as fixed values.
GLIBC_MMAP_MAX = 65536
GLIBC_SETTLED_MMAP_THRESHOLD = 32 * 1024 * 1024
GLIBC_SETTLED_TRIM_THRESHOLD = 2 * GLIBC_SETTLED_MMAP_THRESHOLD


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_host_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True when the C library is glibc."""
    libc = _glibc()
    if libc is None:
        return False
    # mallopt takes an int; glibc reads the trim threshold as a size_t, so -1 means "never trim"
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1))


def release_host_memory(trim: bool = True) -> None:
    """Restore glibc's behaviour as it stands in a long-running program (the thresholds its adaptation
    reaches; see above) and, with ``trim``, return the free heap to the kernel now."""
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    libc.mallopt(M_MMAP_THRESHOLD, GLIBC_SETTLED_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, GLIBC_SETTLED_TRIM_THRESHOLD)
    if trim:
        libc.malloc_trim(0)


_depth = 0  # open reused_host_memory blocks: only the outermost one sets and restores glibc's settings


@contextlib.contextmanager
def reused_host_memory(enabled: bool = True) -> Iterator[None]:
    """Within the block, freed host memory is kept for reuse: the host-memory policy of the module's
    docstring. Blocks may nest (an evaluation inside a training run): the memory is released when the
    outermost one ends. ``enabled=False`` (a GPU run: its allocator caches) changes nothing."""
    global _depth
    if not enabled or (_depth == 0 and not keep_host_memory()):
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            release_host_memory()


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), for records that name their machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
