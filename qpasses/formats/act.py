"""Activation fake-quantization, numpy oracle (the torch twin is qpasses.numerics.fake_quant).

Along the last dim, per block of fmt.block_size (0 = the whole row; a short tail block when K is
not a multiple, computed as a zero-padded block, which leaves its amax unchanged):
int8 / int4: code = clamp(rint(a * (qmax / amax)), -qmax-1, qmax), result code * (amax / qmax),
             all in float32, ties to even; amax == 0 gives zeros.
mxfp4:       X = 2^clamp(floor(log2 amax) - 2, -127, 127) (floor rule, exponent from the float bits),
             result sign(a) * E2M1_round(|a| / X) * X.
Every step is one correctly rounded float32 operation, in the same order as the torch twin and
the ONNX expansion, so all three agree bit for bit.
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.mxfp4 import block_exponent, e2m1_round, e8m0_decode
from qpasses.formats.spec import ActFormat
from qpasses.formats.weight import merge_blocks, split_blocks

F32 = np.float32
QMAX = {"int8": 127, "int4": 7}


def _int_blocks(xb: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [..., nb, B] -> (codes, scales [..., nb, 1]): symmetric INT, one scale per block."""
    qmax = F32(qmax)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.divide(qmax, amax, out=np.zeros_like(amax), where=amax > 0)
    return np.clip(np.rint(xb * inv), -qmax - F32(1), qmax), amax / qmax


def _mxfp4_blocks(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [..., nb, 32] -> (signed E2M1 values, power-of-two scales [..., nb, 1]), floor rule."""
    e = block_exponent(np.abs(xb).max(-1, keepdims=True), "floor")
    scale = e8m0_decode((e + 127).astype(np.uint8))
    return np.sign(xb) * e2m1_round(np.abs(xb) / scale), scale


def quantize_activation_np(x: np.ndarray, fmt: ActFormat) -> tuple[np.ndarray, np.ndarray]:
    """float32 [..., K] -> (grid values [..., nb, B], scales [..., nb, 1]), both float32.

    Grid values are the integer codes (int8 / int4) or the signed E2M1 values (mxfp4); the
    dequantized activation is grid * scale. B = fmt.block_size, or K for per-token (0); the tail
    block is zero-padded."""
    x = np.asarray(x, F32)
    xb = split_blocks(x, fmt.block_size or x.shape[-1])
    return _mxfp4_blocks(xb) if fmt.kind == "mxfp4" else _int_blocks(xb, QMAX[fmt.kind])


def fake_quant_activation_np(x: np.ndarray, fmt: ActFormat) -> np.ndarray:
    """float32 [..., K] -> float32 [..., K], quantized and dequantized along the last dim with fmt."""
    grid, scale = quantize_activation_np(x, fmt)
    return np.ascontiguousarray(merge_blocks(grid * scale, np.shape(x)[-1]))
