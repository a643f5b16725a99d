"""Keep freed large blocks in the process heap (glibc), so per-frame tensors reuse memory instead of page-faulting.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (dynamic, from 128 KiB) with fresh ``mmap`` pages and gives
freed memory above ``M_TRIM_THRESHOLD`` at the top of the heap back to the kernel. The tensors of one frame are
1-10 MB each, so every frame they came back as new zero-filled pages that fault on first touch: on the 2-core
machine the tiny model's MAPE took 46 ms instead of 14 ms (BENCHMARKS.md). Raising both thresholds keeps up to
``TRIM_THRESHOLD_BYTES`` of freed memory in the process for the next frame.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest accepted value on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). Returns True when glibc accepted both,
    False elsewhere (other C libraries or platforms), where nothing is changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return mmap_ok and trim_ok
