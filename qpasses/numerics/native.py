"""The compiler's native numerics (runtime/src/numerics, built with the package into
libqpasses_numerics.so and loaded with ctypes): the same algorithms as their torch versions,
which stay the reference the tests compare them with. No graph library."""

from __future__ import annotations

import ctypes
import functools
import importlib.resources
from pathlib import Path

import torch

LIBRARY_NAME = "libqpasses_numerics.so"
F64 = torch.float64
_P = ctypes.POINTER(ctypes.c_double)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None when this install has not built it (the torch paths serve)."""
    path = Path(str(importlib.resources.files("qpasses.numerics") / LIBRARY_NAME))
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path))
    i64 = ctypes.c_int64
    lib.qpasses_piso_dense.argtypes = [i64, i64, _P, _P, _P, _P, i64, i64, _P, _P]
    lib.qpasses_piso_dense.restype = None
    lib.qpasses_gptq_block.argtypes = [i64, i64, _P, _P, _P, _P, i64, i64, _P, _P]
    lib.qpasses_gptq_block.restype = None
    return lib


def _ptr(t: torch.Tensor):
    return ctypes.cast(t.data_ptr(), _P)


def _lib() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"{LIBRARY_NAME} is not built; reinstall the package (./dev setup)")
    return lib


def piso_dense(w: torch.Tensor, h: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """piso.optimal_scales with a dense H: rows w [R, D], H [D, D], the grid -> (s [R], E(s) [R]),
    one row per event sweep, rows split over torch's intra-op threads."""
    w, h, grid = (t.to(F64).contiguous() for t in (w, h, grid))
    b = (w @ h).contiguous()
    s, e = torch.empty(w.shape[0], dtype=F64), torch.empty(w.shape[0], dtype=F64)
    _lib().qpasses_piso_dense(w.shape[0], w.shape[1], _ptr(w), _ptr(b), _ptr(h), _ptr(grid), grid.numel(),
                           torch.get_num_threads(), _ptr(s), _ptr(e))
    return s, e


def gptq_block(w: torch.Tensor, u: torch.Tensor, s: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GPTQ's column loop over one block: w [N, c] float64 (a copy is updated), U's block [c, c],
    the scales s [N], the grid -> (w updated, quantized columns [N, c], scaled errors [N, c])."""
    w = w.to(F64).clone(memory_format=torch.contiguous_format)  # updated in place by the library
    u, s, grid = (t.to(F64).contiguous() for t in (u, s, grid))
    out, err = torch.empty_like(w), torch.empty_like(w)
    _lib().qpasses_gptq_block(w.shape[0], w.shape[1], _ptr(w), _ptr(u), _ptr(s), _ptr(grid), grid.numel(),
                              torch.get_num_threads(), _ptr(out), _ptr(err))
    return w, out, err
