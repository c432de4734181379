"""The C heap of a long run: freed memory goes back to the system.

A layer-sequential solve allocates and frees, group after group, float64 buffers of a few MiB
whose sizes change with the layer. glibc keeps freed heap memory for reuse, so each group ends
with `release_free_memory`.

Weights kept in mapped files (qpasses.offload) are given back by the same call.

Still open: on the 1B model the resident size grows by about 0.26 GiB a decoder layer (SmolLM2:
0.9 GB over a run) while the torch tensors reachable from Python do not. A fixed 4 MiB mmap
threshold for the whole run removed that growth (on 4 layers of the 1B shape) but made SmolLM2's
forwards 25% slower; the same threshold during solves only did not remove it, nor did a single
malloc arena (MALLOC_ARENA_MAX=1: the same resident size after every group; docs/scaling.md).
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
    """Give the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing), and
    the read pages of values kept in mapped files (`qpasses.offload`)."""
    from qpasses import offload

    offload.release()
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
