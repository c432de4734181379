"""numpy reference of the qpasses matmul ops, built only from qpasses.formats (the formats'
one source of truth) and qpasses.numerics.hadamard.

`reference()` returns the exact result in float64 together with the error bound the kernels
promise: |y - ref| <= 1e-5 * bound + 1e-6 * max|ref|, where bound sums, per output, the absolute
values of the per-32-block partial products (the kernels round each block's exact integer sum
once, then accumulate in float32).
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.act import fake_quant_activation_np
from qpasses.formats.intq import dequantize_int
from qpasses.formats.mxfp4 import dequantize_mxfp4
from qpasses.formats.packing import unpack_int_blocked, unpack_mxfp4
from qpasses.formats.spec import WeightFormat
from qpasses.numerics.hadamard import block_hadamard_np
from qpasses.runtime.ops import OpConfig

F32 = np.float32
RTOL, ATOL = 1e-5, 1e-6


def weight_matrix(cfg: OpConfig, B: np.ndarray, S: np.ndarray, zero_points: np.ndarray | None = None) -> np.ndarray:
    """The op's weight inputs -> float32 W [N, K] (what the op multiplies by)."""
    shape = (cfg.N, cfg.K)
    if cfg.mxfp4:
        return dequantize_mxfp4(unpack_mxfp4(B, S, shape))
    block = 0 if cfg.block_size == cfg.K else cfg.block_size
    fmt = WeightFormat("int4", block, symmetric=zero_points is None)
    return dequantize_int(unpack_int_blocked({"B": B, "scales": S, "zero_points": zero_points}, fmt, shape))


def prepared_activations(cfg: OpConfig, A: np.ndarray, D: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A [..., K] -> (rotated A', quantized-dequantized A' as the op multiplies it), float32."""
    rotated = block_hadamard_np(A, cfg.hadamard_block, D)
    fmt = cfg.act()
    return rotated, (rotated if fmt is None else fake_quant_activation_np(rotated, fmt))


def reference(cfg: OpConfig, A, B, S, zero_points=None, bias=None, L=None, R=None, D=None):
    """-> (Y float64 [..., N], bound float64 [..., N]); see the module docstring."""
    A = np.asarray(A, F32)
    W = weight_matrix(cfg, B, S, zero_points).astype(np.float64)
    rotated, x = prepared_activations(cfg, A, D)
    lead, k = A.shape[:-1], cfg.K
    nb = -(-k // 32)
    pad = nb * 32 - k
    xb = np.pad(x.reshape(-1, k).astype(np.float64), ((0, 0), (0, pad))).reshape(-1, nb, 32)
    wb = np.pad(W, ((0, 0), (0, pad))).reshape(cfg.N, nb, 32)
    partial = np.einsum("mbj,nbj->mnb", xb, wb)
    y, bound = partial.sum(-1), np.abs(partial).sum(-1)
    if L is not None:
        x_lr = (rotated if cfg.lowrank_input == "rotated" else A).reshape(-1, k).astype(np.float64)
        Lf, Rf = np.asarray(L, np.float64), np.asarray(R, np.float64)
        y = y + (x_lr @ Lf) @ Rf
        bound = bound + (np.abs(x_lr) @ np.abs(Lf)) @ np.abs(Rf)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
        bound = bound + np.abs(np.asarray(bias, np.float64))
    return y.reshape(*lead, cfg.N), bound.reshape(*lead, cfg.N)


def check_close(y: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> float:
    """Raise AssertionError unless y is within the kernels' promise; return the worst error/tolerance ratio."""
    tol = RTOL * bound + ATOL * (np.abs(ref).max() if ref.size else 0.0)
    ratio = np.abs(np.asarray(y, np.float64) - ref) / np.maximum(tol, 1e-300)
    worst = float(ratio.max()) if ratio.size else 0.0
    if worst > 1.0:
        i = np.unravel_index(int(ratio.argmax()), ratio.shape)
        raise AssertionError(f"output {i}: {y[i]} vs reference {ref[i]} (tolerance {tol[i]:.3g})")
    return worst
