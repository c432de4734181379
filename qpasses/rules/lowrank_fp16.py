"""Store a low-rank branch left in standard ops (MatMul → MatMul → Add) in fp16.

MatMul(x, L) == MatMul(x, Cast(L₁₆, to=float)) when L holds fp16 values (FxStage.add_lowrank's
factors do), so the file carries 2 bytes per factor value, as the fused op's L, R inputs do.
Used by the stock-ORT lowering targets; the qpasses target fuses the branch into its op instead.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.ir.sites import LOWRANK_PREFIX
from qpasses.rules.base import factor_name, fail, init


class LowRankFactorToFp16(RewriteRuleClassBase):
    def pattern(self, op, x, f):
        return op.MatMul(x, f)

    def check(self, context, x, f, **_):
        if not (f.name or "").startswith(LOWRANK_PREFIX):
            return fail(f"{f.name} is not a low-rank factor", f)
        if f.const_value is None or f.const_value.dtype != ir.DataType.FLOAT:
            return fail(f"{f.name} is not a float32 constant", f)
        data = f.const_value.numpy()
        if not np.array_equal(data.astype(np.float16).astype(np.float32), data):
            return fail(f"{f.name} holds values that fp16 cannot represent", f)
        return MatchResult()

    def rewrite(self, op, x, f, **_):
        data = f.const_value.numpy().astype(np.float16)
        half = init(op, factor_name(data) if f.name.endswith(".L") else f"{f.name}.fp16", data, near=f)
        return op.MatMul(x, op.Cast(half, to=ir.DataType.FLOAT))


def lowrank_fp16_rules() -> list:
    return [LowRankFactorToFp16.rule()]
