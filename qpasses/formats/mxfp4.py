"""MXFP4 (OCP Microscaling v1.0): E2M1 elements, one E8M0 power-of-two scale per 32 elements.

Scale exponent e = floor(log2 amax) - 2, read exactly from the float32 bits of amax ("floor", the
OCP default); "even" first rounds amax to one mantissa bit, ties up (bumps e when the mantissa is
>= 1.75). e is clamped to [-127, 127]; an all-zero block gets e = -127 (E8M0 code 0) and codes 0.
Elements: v / 2^e rounded to nearest E2M1 value, ties to even mantissa, saturating at +-6.
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.spec import WeightFormat
from qpasses.formats.weight import QuantizedWeight, merge_blocks, split_blocks

F32 = np.float32
BLOCK = 32
E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], F32)  # codes 0..7; 8..15 negate


def e2m1_round(a: np.ndarray) -> np.ndarray:
    """Magnitudes a >= 0 (float32, any shape) -> nearest E2M1 magnitude, ties to even, saturate at 6.

    Step 0.5 / 1 / 2 in the binades below 2 / below 4 / above; rint is half-to-even and the
    even multiples of each step are exactly the even-mantissa values.
    """
    step = np.where(a < F32(2), F32(0.5), np.where(a < F32(4), F32(1), F32(2)))
    return np.minimum(np.rint(a / step) * step, F32(6))


_CODE_OF_TWICE = np.zeros(13, np.uint8)  # 2·|value| -> magnitude code (an index into E2M1_MAGNITUDES)
_CODE_OF_TWICE[(E2M1_MAGNITUDES * 2).astype(np.int64)] = np.arange(8)


def e2m1_encode(x: np.ndarray) -> np.ndarray:
    """float32 values (already divided by the block scale), any shape -> uint8 E2M1 codes, same shape.

    Round to nearest even, saturate at +-6; the sign bit follows the input's sign (-0.0 and small
    negatives give code 8, -0).
    """
    x = np.asarray(x, F32)
    if np.isnan(x).any():
        raise ValueError("cannot encode NaN as E2M1 (the format has no NaN)")
    mag = _CODE_OF_TWICE[(e2m1_round(np.abs(x)) * F32(2)).astype(np.uint8)]  # exact: 2·value is 0..12
    return mag | (np.signbit(x).astype(np.uint8) << 3)


def e2m1_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 E2M1 codes 0..15, any shape -> float32 values, same shape (code 8 is -0.0)."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("E2M1 codes must be in 0..15")
    codes = codes.astype(np.uint8)
    mag = E2M1_MAGNITUDES[codes & 7]
    return np.where(codes & 8, -mag, mag)


def e8m0_encode(exponent: np.ndarray) -> np.ndarray:
    """Integer exponents in [-127, 127], any shape -> uint8 E8M0 codes (exponent + 127), same shape."""
    e = np.asarray(exponent)
    if e.size and (e.min() < -127 or e.max() > 127):
        raise ValueError("E8M0 exponents must be in [-127, 127]")
    return (e.astype(np.int32) + 127).astype(np.uint8)


def e8m0_decode(codes: np.ndarray) -> np.ndarray:
    """uint8 E8M0 codes, any shape -> float32 2^(code - 127), same shape; code 255 -> NaN."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < 0 or codes.max() > 255):
        raise ValueError("E8M0 codes must be in 0..255")
    c = codes.astype(np.int32)
    return np.where(c == 255, F32(np.nan), np.ldexp(F32(1), np.minimum(c, 254) - 127).astype(F32))


def block_exponent(amax: np.ndarray, scale_rule: str = "floor") -> np.ndarray:
    """Block maxima |v| (float32, any shape) -> int32 scale exponents e in [-127, 127], same shape.

    floor(log2 amax) is the biased exponent field minus 127 (exact; subnormal and zero amax land
    below -125 and clamp to -127). "even" adds 1 when the mantissa field is >= 0.75 (amax >= 1.75 * 2^f).
    """
    bits = np.ascontiguousarray(amax, F32).view(np.int32)
    e = ((bits >> 23) & 0xFF) - 127
    if scale_rule == "even":
        e = e + ((bits & 0x7FFFFF) >= 0x600000)
    elif scale_rule != "floor":
        raise ValueError(f"unknown MXFP4 scale rule {scale_rule!r}")
    return np.clip(e - 2, -127, 127).astype(np.int32)


def quantize_mxfp4(w: np.ndarray, fmt: WeightFormat, scales: np.ndarray | None = None) -> QuantizedWeight:
    """float32 [N, K] -> MXFP4 QuantizedWeight: codes [N, ceil(K/32), 32], E8M0 scales [N, ceil(K/32)],
    the scales from fmt.scale_rule or the given E8M0 codes (uint8 [N, ceil(K/32)])."""
    n, k = w.shape
    blocks = split_blocks(np.asarray(w, F32), BLOCK)
    if scales is None:
        scales = e8m0_encode(block_exponent(np.abs(blocks).max(-1), fmt.scale_rule))
    elif np.asarray(scales).dtype != np.uint8 or np.asarray(scales).shape != blocks.shape[:2] or (scales == 255).any():
        raise ValueError(f"mxfp4 scales must be uint8 E8M0 codes below 255 of shape {blocks.shape[:2]}")
    codes = e2m1_encode(blocks / e8m0_decode(scales)[..., None])
    return QuantizedWeight(fmt, (n, k), codes, scales, None)


def dequantize_mxfp4(q: QuantizedWeight) -> np.ndarray:
    """MXFP4 QuantizedWeight -> float32 [N, K] = E2M1 value * 2^(E - 127)."""
    return merge_blocks(e2m1_decode(q.codes) * e8m0_decode(q.scales)[..., None], q.shape[1])
