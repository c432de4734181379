"""Lower an embedding lookup of a quantized table, keeping the table packed.

int4 / int8: Gather(W, ids) == Reshape(GatherBlockQuantized(codes, ids, s), [..., K]) because each row
             of W is s · (code − zp) per block along the row.
mxfp4:       Gather(W, ids) == decode(Gather(B, ids), Gather(E, ids)): gathering packed rows commutes
             with the per-row decode, so only the looked-up rows are ever decoded.
The packed codes are the exact bytes the lm_head's matmul reads (MatMulNBits / MatMulInt4 /
MatMulMXFP4), so a tied lm_head and the embedding share one initializer.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.domain import MS_DOMAIN
from qpasses.formats import pack_matmulnbits, pack_mxfp4
from qpasses.rules.base import fail, init, on_plan
from qpasses.rules.lower_mxfp4_std import decode_mxfp4, flatten_rows


class GatherRule(RewriteRuleClassBase):
    """Gather(table, ids) on axis 0 of a planned constant table. Subclasses define
    `unsupported(q) -> str` (why they cannot lower the plan q, "" if they can) and
    `rows(op, w, ids, q)` (the looked-up rows as [..., nblocks, block])."""

    def __init__(self, name: str, plan: dict):
        super().__init__(name)
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
        why = self.unsupported(q)
        if why:
            return fail(f"{w.name}: {why}", w)
        if not on_plan(w, "nk", q):
            return fail(f"{w.name} differs from the dequantized codes of its plan", w)
        return MatchResult()

    def rewrite(self, op, w, ids, **_):
        q = self.plan[w.name]
        nb, block = q.codes.shape[1:]
        return flatten_rows(op, self.rows(op, w, ids, q), op.Shape(ids), nb * block, q.shape[1])


class ToGatherBlockQuantized(GatherRule):
    def __init__(self, plan: dict):
        super().__init__("gather.block_quantized", plan)

    def unsupported(self, q) -> str:
        block = q.codes.shape[2]
        if q.fmt.kind not in ("int4", "int8") or not q.fmt.symmetric or block < 16 or block & (block - 1):
            return f"GatherBlockQuantized takes symmetric INT4/INT8 with power-of-two blocks, not {q.fmt}"
        return ""

    def rows(self, op, w, ids, q):
        v, nb = q.scales.shape
        data = init(op, f"{w.name}.qweight", pack_matmulnbits(q)["B"], near=w)
        scales = init(op, f"{w.name}.qscales_rows", q.scales.reshape(v, nb, 1).astype(np.float32))
        # `bits` defaults to 4 and exists from onnxruntime 1.23 only: written for INT8 alone, an INT4
        # table loads from 1.22 (runtime.min_ort).
        bits = {"bits": q.fmt.bits} if q.fmt.bits != 4 else {}
        return op.GatherBlockQuantized(data, ids, scales, _domain=MS_DOMAIN, **bits,
                                       block_size=q.codes.shape[2], quantize_axis=2, gather_axis=0)


class ToMxfp4GatherDecode(GatherRule):
    def __init__(self, plan: dict):
        super().__init__("gather.mxfp4", plan)

    def unsupported(self, q) -> str:
        return "" if q.fmt.kind == "mxfp4" else f"this rule gathers MXFP4 tables, not {q.fmt.kind}"

    def rows(self, op, w, ids, q):
        b, e = pack_mxfp4(q)
        packed = init(op, f"{w.name}.qweight", b, near=w)
        scales = init(op, f"{w.name}.qscales", e, near=w)
        return decode_mxfp4(op, op.Gather(packed, ids, axis=0), op.Gather(scales, ids, axis=0))


def gather_rules(plan: dict) -> list:
    return [ToGatherBlockQuantized.rule(plan), ToMxfp4GatherDecode.rule(plan)]
