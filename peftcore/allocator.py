"""Keep freed CPU memory for the next train step instead of handing it back to the operating system.

glibc's malloc returns large freed blocks to the kernel: blocks above its mmap threshold (128 KiB at first, raised
as blocks are freed) are unmapped on free, and the heap is trimmed when more than its trim threshold lies free at
the top. A train step frees its activations and allocates them again in the next step, so each step can fault its
pages in afresh: at roberta-base (batch 8 x 128) 13,000-160,000 page faults and up to 0.6 s of system time per
1.5 s step, its time varying by ±25% from step to step (docs/performance.md). ``retain_freed_memory`` raises the
mmap threshold to glibc's maximum (32 MiB) and stops trimming, as ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` would at start-up: the process keeps the memory of its peak, and steps reuse it.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are still mapped
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


@cache
def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (process-wide, from this call on); whether it could (Linux with
    glibc; other C libraries and systems are left as they are)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
