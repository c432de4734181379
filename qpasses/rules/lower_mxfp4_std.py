"""Lower MXFP4 linears to standard ONNX ops that stock onnxruntime runs (no FP4 kernel exists there).

x · Wᵀ == MatMul(x, Transpose(E2M1[codes] · 2^(E − 127))): the file stores the packed nibbles
(16 bytes per block of 32) and one E8M0 byte per block; a 16-entry value table and a 256-entry
power-of-two table rebuild W exactly. ORT folds the decode at session start (file small, memory
fp32); the runtime issue replaces this with our own kernel.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qpasses.formats import e2m1_decode, e8m0_decode, pack_mxfp4
from qpasses.rules.base import LinearRule, init, variants


def const(op, array, dtype=np.float32):
    return op.Constant(value=ir.tensor(np.asarray(array, dtype=dtype)))


def decode_mxfp4(op, packed: ir.Value, scales: ir.Value) -> ir.Value:
    """uint8 nibbles [..., nb, 16] and E8M0 codes [..., nb] -> float32 values [..., nb, 32]."""
    lo = op.BitwiseAnd(packed, const(op, 15, np.uint8))
    hi = op.BitShift(packed, const(op, 4, np.uint8), direction="RIGHT")
    axis = const(op, [-1], np.int64)
    pairs = op.Concat(op.Unsqueeze(lo, axis), op.Unsqueeze(hi, axis), axis=-1)  # [..., nb, 16, 2]
    shape = op.Concat(op.Shape(scales), const(op, [32], np.int64), axis=0)
    codes = op.Cast(op.Reshape(pairs, shape), to=ir.DataType.INT32)
    values = op.Gather(const(op, e2m1_decode(np.arange(16, dtype=np.uint8))), codes)
    pow2 = op.Gather(const(op, e8m0_decode(np.arange(256, dtype=np.uint8))), op.Cast(scales, to=ir.DataType.INT32))
    return op.Mul(values, op.Unsqueeze(pow2, axis))


def flatten_rows(op, blocks: ir.Value, lead: ir.Value, width: int, k: int) -> ir.Value:
    """[..., nb, B] -> [..., K]: Reshape to lead + [nb * B], then drop the zero padding past K."""
    i64 = np.int64
    flat = op.Reshape(blocks, op.Concat(lead, const(op, [width], i64), axis=0))
    if width == k:
        return flat
    return op.Slice(flat, const(op, [0], i64), const(op, [k], i64), const(op, [-1], i64))


class ToMxfp4Decode(LinearRule):
    rule_name = "std.mxfp4"
    kinds = ("mxfp4",)

    def lower(self, op, x, w, q, xq):
        n, k = q.shape
        b, e = pack_mxfp4(q)
        packed = init(op, f"{w.name}.qweight", b, near=w)  # uint8 [N, nb, 16]
        scales = init(op, f"{w.name}.qscales", e)  # uint8 [N, nb] E8M0
        wfull = flatten_rows(op, decode_mxfp4(op, packed, scales), const(op, [n], np.int64), b.shape[1] * 32, k)
        return op.MatMul(x, op.Transpose(wfull, perm=[1, 0]))


def mxfp4_std_rules(plan=None, fmt=None) -> list:
    return variants(ToMxfp4Decode, plan=plan, fmt=fmt)
