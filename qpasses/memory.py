"""The C heap of a long run: freed memory goes back to the system.

A layer-sequential solve allocates and frees, group after group, float64 buffers of a few MiB
whose sizes change with the layer. glibc keeps freed heap memory for reuse, so each group ends
with `release_free_memory`.

Weights kept in mapped files (qpasses.offload) are given back by the same call.

What still grows over a run is the codes (1 byte a weight until lowering packs them). The growth
of about 0.26 GiB a 1B decoder layer measured before the weights moved to mapped files was the
solved weights on the heap (it went away with them); one malloc arena (MALLOC_ARENA_MAX=1)
changed nothing, and a fixed 4 MiB mmap threshold made forwards 25% slower (docs/scaling.md).
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
