"""Lower an embedding lookup of a quantized table to com.microsoft.GatherBlockQuantized.

Gather(W, ids) == Reshape(GatherBlockQuantized(codes, ids, s), [..., K]) because each row of W
is s · (code − zp) per block along the row. The packed codes [V, nblocks, block·bits/8] are the
exact bytes MatMulNBits reads, so a tied lm_head and the embedding share one initializer
(only the small scales exist twice, in the two shapes the two ops demand).
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from qpasses.formats import dequantize_weight, pack_matmulnbits
from qpasses.rules.base import fail, init
from qpasses.rules.lower_mxfp4_std import const

MS_DOMAIN = "com.microsoft"


class ToGatherBlockQuantized(RewriteRuleClassBase):
    def __init__(self, plan: dict):
        super().__init__("gather.block_quantized")
        self.plan = plan

    def pattern(self, op, w, ids):
        return op.Gather(w, ids, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, w, ids, y, **_):
        if w.const_value is None or len(w.const_value.shape) != 2:
            return fail("the table is not a constant 2-D initializer", w)
        if y.producer().attributes.get_int("axis", 0) != 0:
            return fail("only row gathers (axis 0) are embedding lookups", y)
        q = self.plan.get(w.name)
        if q is None:
            return fail(f"{w.name} has no quantization plan (kept in float)", w)
        block = q.codes.shape[2]
        if q.fmt.kind not in ("int4", "int8") or not q.fmt.symmetric or block < 16 or block & (block - 1):
            return fail(f"{w.name}: GatherBlockQuantized takes symmetric INT4/INT8 with power-of-two blocks, not {q.fmt}", w)
        if not np.array_equal(w.const_value.numpy(), dequantize_weight(q)):
            return fail(f"{w.name} differs from the dequantized codes of its plan", w)
        return MatchResult()

    def rewrite(self, op, w, ids, **_):
        q = self.plan[w.name]
        v, k = q.shape
        nb, block = q.codes.shape[1:]
        packed = pack_matmulnbits(q)
        data = init(op, f"{w.name}.qweight", packed["B"], near=w)
        scales = init(op, f"{w.name}.qscales_rows", q.scales.reshape(v, nb, 1).astype(np.float32))
        rows = op.GatherBlockQuantized(data, ids, scales, _domain=MS_DOMAIN, bits=q.fmt.bits, block_size=block,
                                       quantize_axis=2, gather_axis=0)
        i64 = np.int64
        flat = op.Reshape(rows, op.Concat(op.Shape(ids), const(op, [nb * block], i64), axis=0))
        if nb * block == k:
            return flat
        return op.Slice(flat, const(op, [0], i64), const(op, [k], i64), const(op, [-1], i64))


def gather_rules(plan: dict) -> list:
    return [ToGatherBlockQuantized.rule(plan)]
