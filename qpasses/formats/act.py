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


def _int_blocks(xb: np.ndarray, qmax: int) -> np.ndarray:
    """float32 [..., nb, B] -> fake-quantized float32, symmetric INT with one scale per block."""
    qmax = F32(qmax)
    amax = np.abs(xb).max(-1, keepdims=True)
    inv = np.divide(qmax, amax, out=np.zeros_like(amax), where=amax > 0)
    code = np.clip(np.rint(xb * inv), -qmax - F32(1), qmax)
    return code * (amax / qmax)


def _mxfp4_blocks(xb: np.ndarray) -> np.ndarray:
    """float32 [..., nb, 32] -> MXFP4 fake-quantized float32 (floor scale rule)."""
    e = block_exponent(np.abs(xb).max(-1, keepdims=True), "floor")
    scale = e8m0_decode((e + 127).astype(np.uint8))
    return np.sign(xb) * e2m1_round(np.abs(xb) / scale) * scale


def fake_quant_activation_np(x: np.ndarray, fmt: ActFormat) -> np.ndarray:
    """float32 [..., K] -> float32 [..., K], quantized and dequantized along the last dim with fmt."""
    x = np.asarray(x, F32)
    k = x.shape[-1]
    xb = split_blocks(x, fmt.block_size or k)
    yb = _mxfp4_blocks(xb) if fmt.kind == "mxfp4" else _int_blocks(xb, QMAX[fmt.kind])
    return np.ascontiguousarray(merge_blocks(yb, k))
