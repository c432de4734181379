"""The C heap of a long run: a solve's freed buffers go back to the system.

A layer-sequential solve allocates and frees, group after group, float64 buffers of a few MiB to
a few hundred MiB whose sizes change with the layer. glibc serves a block below its mmap
threshold from the heap and, by default, raises that threshold up to 32 MiB as mapped blocks are
freed; the solves' buffers then fragment the heap and the resident size grows layer after layer
although nothing is referenced any more (measured on the 1B model: 0.26 GiB a decoder layer, about
four times its codes). So during a solve (`solve_heap`) every block of SOLVE_THRESHOLD or more is
mapped on its own and unmapped when freed, and each group ends with `release_free_memory`.
Forwards keep a 32 MiB threshold (glibc's own ceiling): mapping every activation buffer made
SmolLM2's forwards 25% slower. Elsewhere than glibc all of this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from contextlib import contextmanager

SOLVE_THRESHOLD = 4 << 20
FORWARD_THRESHOLD = 32 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


@contextmanager
def solve_heap():
    """Blocks of SOLVE_THRESHOLD bytes or more are mapped on their own inside the block."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, SOLVE_THRESHOLD)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, FORWARD_THRESHOLD)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
