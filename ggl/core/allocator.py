"""Keep freed CPU memory in the process for reuse instead of handing it back to the OS at every free.

A batched attack step materialises every candidate's trial update at once. On the federation's CNN
(544,522 parameters) a population of 50 makes 109 MB per update tuple, plus the adaptive attacker's
copies, allocated and freed again every generation. glibc's malloc serves blocks that large with a
fresh ``mmap`` and unmaps them on ``free``, so each generation pays the kernel for zeroing new pages.
Raising malloc's mmap and trim thresholds makes it reuse the freed heap instead;
``benchmarks/bench_allocator.py`` measures the gain (numbers: ``benchmarks/README.md``).

The cost is that the process keeps its peak heap until it exits, which an attack process reaches
anyway within its first generation. On other C libraries (macOS, Windows, musl) this is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = 2 ** 31 - 1  # the largest value mallopt takes: blocks below 2 GiB come from the heap


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retention_supported() -> bool:
    """Whether ``retain_freed_memory`` can act here (a glibc system)."""
    return _libc() is not None


def retain_freed_memory() -> bool:
    """Make malloc serve blocks below 2 GiB from the heap and keep freed heap memory for reuse, for the
    rest of the process. Returns whether the C library took the setting (glibc only)."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP))
