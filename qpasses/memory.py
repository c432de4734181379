"""The C heap of a long run: freed memory goes back to the system.

A layer-sequential solve allocates and frees, group after group, float64 buffers of a few MiB
whose sizes change with the layer. glibc keeps freed heap memory for reuse, and the next group's
differently sized buffers fragment it, so without a trim the resident size grows layer after
layer although nothing is referenced any more. Each group ends with `release_free_memory`.

(A fixed mmap threshold, which maps every block above it on its own, was tried and dropped: at
4 MiB it made SmolLM2's forwards 25% slower, the page faults of every activation buffer.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
