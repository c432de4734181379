"""INT4 / INT8 weight quantization (round to nearest, ties to even, float32 arithmetic).

Symmetric: s = amax / qmax (qmax 7 or 127; amax == 0 -> s = 1), q = clamp(rint(w / s), -qmax-1, qmax),
stored code q + qmax + 1 with that as the zero point. Asymmetric (GPTQ convention, L = 2^bits - 1):
lo = min(min, 0), hi = max(max, 0) (both 0 -> -1, 1), s = (hi - lo) / L (refined below),
z = rint(-lo / s), code = clamp(rint(w / s) + z, 0, L). Dequantized value: (code - z) * s in float32.

Idempotence: quantizing a dequantized block must give back the same codes and scale, or the
compiler could not recover the codes of a weight already snapped onto the grid.
Symmetric scales already are fixed points: fl(fl(qmax * fl(a / qmax)) / qmax) == fl(a / qmax) for
every float32 a (checked exhaustively), and the block maximum always gets code +-qmax.
The asymmetric rule needs two refinements, both invisible at the quantization-error scale:
1. s is rounded (to nearest even) to 24 - bits significant bits (relative change <= 2^-(24 - bits)),
   so every m * s with m <= L is exact, the grid's hi' - lo' is exactly L * s, and
   (hi' - lo') / L gives s back bit for bit (plain float32 drifts by an ulp per requantization).
2. The block maximum gets code L. Without this, a near tie at both ends (-lo / s close to n + 0.5,
   e.g. any block with lo == -hi) rounds both ends inward, the grid spans only L - 1 steps, and
   requantizing it picks a smaller scale. lo always gets code 0 already (rint is odd).
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.spec import WeightFormat
from qpasses.formats.weight import QuantizedWeight, block_length, merge_blocks, split_blocks

F32 = np.float32


def _quantize_blocks(blocks: np.ndarray, fmt: WeightFormat,
                     scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 [..., B] -> (codes uint8 [..., B], scales float32 [...], zero points uint8 [...]).
    Symmetric only: `scales` (float32 [...], positive) replaces the amax / qmax rule."""
    if fmt.symmetric:
        qmax = F32(2 ** (fmt.bits - 1) - 1)
        if scales is None:
            amax = np.abs(blocks).max(-1)
            scales = np.where(amax > 0, amax / qmax, F32(1)).astype(F32)
        q = np.clip(np.rint(blocks / scales[..., None]), -qmax - 1, qmax)
        zp = np.full(scales.shape, qmax + 1, np.uint8)
        return (q + (qmax + 1)).astype(np.uint8), scales, zp
    top = F32(2**fmt.bits - 1)
    lo = np.minimum(blocks.min(-1), F32(0))
    hi = np.maximum(blocks.max(-1), F32(0))
    flat = lo == hi
    lo, hi = np.where(flat, F32(-1), lo), np.where(flat, F32(1), hi)
    scales = _round_significand(((hi - lo) / top).astype(F32), fmt.bits)
    z = np.rint(-lo / scales)
    codes = np.clip(np.rint(blocks / scales[..., None]) + z[..., None], 0, top)
    codes = np.where((blocks == hi[..., None]) & (hi > 0)[..., None], top, codes)
    return codes.astype(np.uint8), scales, z.astype(np.uint8)


def _round_significand(x: np.ndarray, drop: int) -> np.ndarray:
    """Positive float32 [...] -> same shape, rounded to nearest (ties to even) with the low `drop` bits clear."""
    b = x.view(np.int32)
    b = (b + ((1 << (drop - 1)) - 1) + ((b >> drop) & 1)) & ~((1 << drop) - 1)
    return b.astype(np.int32).view(F32)


def _dequantize_blocks(codes: np.ndarray, scales: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """codes uint8 [..., B], scales float32 [...], zp uint8 [...] -> float32 [..., B]."""
    return (codes.astype(F32) - zp.astype(F32)[..., None]) * scales[..., None]


def quantize_int(w: np.ndarray, fmt: WeightFormat, scales: np.ndarray | None = None) -> QuantizedWeight:
    """float32 [N, K] -> QuantizedWeight (INT4/INT8), quantized along K in blocks of fmt.block_size,
    with the rule's scales or the given ones (symmetric only, float32 [N, nblocks], positive)."""
    n, k = w.shape
    blocks = split_blocks(np.asarray(w, F32), block_length(fmt, k))
    nb, b = blocks.shape[1:]
    if scales is not None:
        if not fmt.symmetric:
            raise ValueError("given scales need a symmetric format")
        scales = np.asarray(scales, F32)
        if scales.shape != (n, nb) or not (np.isfinite(scales) & (scales > 0)).all():
            raise ValueError(f"int scales must be finite positive float32 of shape {(n, nb)}")
        scales = scales.reshape(n * nb)
    codes, scales, zp = _quantize_blocks(blocks.reshape(n * nb, b), fmt, scales)
    return QuantizedWeight(fmt, (n, k), codes.reshape(n, nb, b), scales.reshape(n, nb), zp.reshape(n, nb))


def dequantize_int(q: QuantizedWeight) -> np.ndarray:
    """INT QuantizedWeight -> float32 [N, K] = (code - zero point) * scale."""
    return merge_blocks(_dequantize_blocks(q.codes, q.scales, q.zero_points), q.shape[1])
