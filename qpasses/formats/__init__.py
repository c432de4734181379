"""The number formats, bit-exact, in numpy: quantize / dequantize weights, byte layouts, and the
activation fake-quant oracle. One source of truth for every other module (torch twin for
activations: qpasses.numerics.fake_quant)."""

from __future__ import annotations

import numpy as np

from qpasses.formats.act import fake_quant_activation_np
from qpasses.formats.intq import dequantize_int, quantize_int
from qpasses.formats.mxfp4 import (
    block_exponent,
    dequantize_mxfp4,
    e2m1_decode,
    e2m1_encode,
    e2m1_round,
    e8m0_decode,
    e8m0_encode,
    quantize_mxfp4,
)
from qpasses.formats.packing import (
    pack_matmulnbits,
    pack_mxfp4,
    pack_nibbles,
    unpack_matmulnbits,
    unpack_mxfp4,
    unpack_nibbles,
)
from qpasses.formats.spec import ActFormat, WeightFormat
from qpasses.formats.weight import QuantizedWeight


def quantize_weight(w: np.ndarray, fmt: WeightFormat, scales: np.ndarray | None = None) -> QuantizedWeight:
    """float32 [N, K] (torch W[n, k]) -> QuantizedWeight, quantized along K.

    scales: chosen scales in the QuantizedWeight.scales layout [N, nblocks] (INT: float32 step
    sizes, symmetric only; MXFP4: E8M0 codes) instead of the format's rule; codes are then the
    round-to-nearest of w / scale, clamped to the grid.
    Idempotent on the grid: quantize_weight(dequantize_weight(q), q.fmt, q.scales) reproduces q
    exactly, and without scales too for the rule's own scales.
    """
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_weight takes a 2-D [N, K] weight, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("cannot quantize a weight that holds NaN or Inf")
    return quantize_mxfp4(w, fmt, scales) if fmt.kind == "mxfp4" else quantize_int(w, fmt, scales)


def dequantize_weight(q: QuantizedWeight) -> np.ndarray:
    """QuantizedWeight -> float32 [N, K]: exactly the values the deployed graph computes with."""
    return dequantize_mxfp4(q) if q.fmt.kind == "mxfp4" else dequantize_int(q)


__all__ = [
    "ActFormat",
    "QuantizedWeight",
    "WeightFormat",
    "block_exponent",
    "dequantize_weight",
    "e2m1_decode",
    "e2m1_encode",
    "e2m1_round",
    "e8m0_decode",
    "e8m0_encode",
    "fake_quant_activation_np",
    "pack_matmulnbits",
    "pack_mxfp4",
    "pack_nibbles",
    "quantize_weight",
    "unpack_matmulnbits",
    "unpack_mxfp4",
    "unpack_nibbles",
]
