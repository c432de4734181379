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


class ToMxfp4Decode(LinearRule):
    rule_name = "std.mxfp4"
    kinds = ("mxfp4",)

    def lower(self, op, x, w, q, xq):
        n, k = q.shape
        nb = q.codes.shape[1]
        b, e = pack_mxfp4(q)
        packed = init(op, f"{w.name}.qweight", b)  # uint8 [N, nb, 16]
        scales = init(op, f"{w.name}.qscales", e)  # uint8 [N, nb] E8M0
        lo = op.BitwiseAnd(packed, const(op, 15, np.uint8))
        hi = op.BitShift(packed, const(op, 4, np.uint8), direction="RIGHT")
        axis = const(op, [-1], np.int64)
        pairs = op.Concat(op.Unsqueeze(lo, axis), op.Unsqueeze(hi, axis), axis=-1)  # [N, nb, 16, 2]
        codes = op.Cast(op.Reshape(pairs, const(op, [n, nb, 32], np.int64)), to=ir.DataType.INT32)
        values = op.Gather(const(op, e2m1_decode(np.arange(16, dtype=np.uint8))), codes)
        pow2 = op.Gather(const(op, e8m0_decode(np.arange(256, dtype=np.uint8))),
                         op.Cast(scales, to=ir.DataType.INT32))
        wfull = op.Reshape(op.Mul(values, op.Unsqueeze(pow2, axis)), const(op, [n, nb * 32], np.int64))
        if nb * 32 != k:
            wfull = op.Slice(wfull, const(op, [0], np.int64), const(op, [k], np.int64), const(op, [1], np.int64))
        return op.MatMul(x, op.Transpose(wfull, perm=[1, 0]))


def mxfp4_std_rules(plan=None, fmt=None) -> list:
    return variants(ToMxfp4Decode, plan=plan, fmt=fmt)
