"""Byte layouts of quantized weights.

4-bit codes go two per byte along the last axis, element 2i in the low nibble and 2i+1 in the
high nibble. MatMulNBits (com.microsoft, ONNX Runtime): B uint8 [N, nblocks, B*bits/8], scales
float32 flat [N*nblocks], zero points packed the same way along the blocks of a row
[N, ceil(nblocks*bits/8)] (omitted when symmetric: the op's default is 2^(bits-1)). MXFP4: B uint8
[N, nblocks, 16] (element 32b+j in byte j//2 of block b, even j low), E uint8 E8M0 [N, nblocks].
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.spec import WeightFormat
from qpasses.formats.weight import QuantizedWeight, block_length


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes 0..15 [..., L] -> uint8 [..., ceil(L/2)]; even index low nibble, odd L padded with 0."""
    codes = np.asarray(codes, np.uint8)
    if codes.size and codes.max() > 15:
        raise ValueError("4-bit codes must be in 0..15")
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: np.ndarray, length: int) -> np.ndarray:
    """uint8 [..., ceil(length/2)] -> uint8 codes [..., length]: inverse of pack_nibbles."""
    packed = np.asarray(packed, np.uint8)
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return codes[..., :length]


def _check_matmulnbits(fmt: WeightFormat, block: int) -> None:
    """Raise ValueError unless MatMulNBits can take this format with blocks of `block`."""
    if fmt.kind == "mxfp4":
        raise ValueError("MatMulNBits takes INT4/INT8 weights, not mxfp4")
    if block < 16 or block & (block - 1):
        raise ValueError(f"MatMulNBits needs a power-of-two block >= 16, not {block}")


def pack_matmulnbits(q: QuantizedWeight) -> dict[str, np.ndarray | None]:
    """INT QuantizedWeight -> {"B": uint8 [N, nblocks, B*bits/8], "scales": float32 [N*nblocks],
    "zero_points": uint8 [N, ceil(nblocks*bits/8)] or None when symmetric}."""
    _check_matmulnbits(q.fmt, q.block)
    return pack_int_blocked(q)


def pack_int_blocked(q: QuantizedWeight) -> dict[str, np.ndarray | None]:
    """pack_matmulnbits' byte layout for any block length, per channel (block = K) included; the
    layout of qpasses.MatMulInt4."""
    if q.fmt.kind == "mxfp4":
        raise ValueError("INT packing takes INT4/INT8 weights, not mxfp4")
    four = q.fmt.bits == 4
    data = pack_nibbles(q.codes) if four else q.codes.copy()
    zp = None
    if not q.fmt.symmetric:
        zp = pack_nibbles(q.zero_points) if four else q.zero_points.copy()
    return {"B": data, "scales": q.scales.reshape(-1).copy(), "zero_points": zp}


def unpack_matmulnbits(packed: dict, fmt: WeightFormat, shape: tuple[int, int]) -> QuantizedWeight:
    """MatMulNBits initializers (as from pack_matmulnbits) + format + (N, K) -> QuantizedWeight."""
    _check_matmulnbits(fmt, block_length(fmt, shape[1]))
    return unpack_int_blocked(packed, fmt, shape)


def unpack_int_blocked(packed: dict, fmt: WeightFormat, shape: tuple[int, int]) -> QuantizedWeight:
    """The inverse of pack_int_blocked (any block length, per channel included)."""
    n, k = shape
    block = block_length(fmt, k)
    nb = -(-k // block)
    data = np.asarray(packed["B"], np.uint8).reshape(n, nb, -1)
    codes = unpack_nibbles(data, block) if fmt.bits == 4 else data.copy()
    scales = np.asarray(packed["scales"], np.float32).reshape(n, nb).copy()
    zp = packed.get("zero_points")
    if zp is None:
        zp = np.full((n, nb), 2 ** (fmt.bits - 1), np.uint8)
    else:
        zp = np.asarray(zp, np.uint8).reshape(n, -1)
        zp = unpack_nibbles(zp, nb) if fmt.bits == 4 else zp.copy()
    return QuantizedWeight(fmt, (n, k), codes, scales, zp)


def pack_mxfp4(q: QuantizedWeight) -> tuple[np.ndarray, np.ndarray]:
    """MXFP4 QuantizedWeight -> (B uint8 [N, nblocks, 16] packed E2M1 codes, E uint8 [N, nblocks])."""
    if q.fmt.kind != "mxfp4":
        raise ValueError(f"pack_mxfp4 takes mxfp4 weights, not {q.fmt.kind}")
    return pack_nibbles(q.codes), q.scales.copy()


def unpack_mxfp4(b: np.ndarray, e: np.ndarray, shape: tuple[int, int], scale_rule: str = "floor") -> QuantizedWeight:
    """(B uint8 [N, nblocks, 16], E uint8 [N, nblocks]) + (N, K) -> MXFP4 QuantizedWeight.

    The bytes do not record how the scales were chosen; scale_rule only labels the format.
    """
    fmt = WeightFormat("mxfp4", 32, True, scale_rule)
    return QuantizedWeight(fmt, tuple(shape), unpack_nibbles(b, 32), np.asarray(e, np.uint8).copy(), None)
