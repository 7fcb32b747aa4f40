"""Keep freed host memory for the next training step instead of handing it back to the kernel.

PyTorch's CPU allocator has no cache of its own (the CUDA one does): every activation is a fresh
``malloc`` and every free a ``free``. glibc serves blocks above its mmap threshold (128 KiB, rising
adaptively to 32 MiB) with ``mmap`` and unmaps them on free, so each step maps its activations again and
the kernel zero-fills every page on first touch. For alexnet_d2l at batch 128 that is about 230,000 page
faults (0.9 GB) per step on the CPU; touching 0.9 GB of fresh pages costs ~200 ms more than reusing them
on the 2-core machines here, against a step of ~1.2 s.

Intel's extension for PyTorch tells users to ``LD_PRELOAD`` jemalloc or tcmalloc for this; a library
cannot do that from inside a running process, but glibc's ``mallopt`` can turn off mmap'd blocks and heap
trimming at any time. Freed blocks then stay in the heap, and the next step, which asks for the same
sizes, reuses them. The price is that the process keeps its peak memory until :func:`release_host_memory`
(the trainer calls it when a CPU run ends). On other C libraries (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

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
    """Within the block, freed host memory is kept for reuse (see the module's docstring). Blocks may nest
    (an evaluation inside a training run): the memory is released when the outermost one ends."""
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
