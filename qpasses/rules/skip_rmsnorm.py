"""Fuse RMSNorm subgraphs into onnxruntime's SkipSimplifiedLayerNormalization.

Identity: w · (s · 1/sqrt(mean(s², -1) + eps)) with s = a + b is what
com.microsoft.SkipSimplifiedLayerNormalization(a, b, w; epsilon) returns as output 0, and s itself
is its output 3; one node instead of eight (a residual add and the exported RMSNorm: Pow,
ReduceMean, Add, Sqrt, Reciprocal and two Mul). The fused kernel sums in a different order, so
the result agrees to float rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.domain import MS_DOMAIN
from qpasses.rules.base import constant, fail


def _scalar(v) -> float | None:
    c = constant(v)
    return None if c is None or c.size != 1 else float(c.reshape(()))


class SkipRMSNorm(RewriteRuleClassBase):
    def __init__(self):
        super().__init__("fuse.skip_rms_norm")

    def pattern(self, op, s, two, axes, eps, w):
        # s = Add(a, b) is not part of the pattern: its other reader (the next residual add) keeps
        # it alive, so the rewrite re-points that reader at the fused node's sum output instead.
        mean = op.ReduceMean(op.Pow(s, two), axes, _allow_other_attributes=True, _outputs=["mean"])
        rsqrt = op.Reciprocal(op.Sqrt(op.Add(mean, eps)))
        return op.Mul(w, op.Mul(s, rsqrt))

    def check(self, context, s, two, axes, eps, w, mean, **_):
        add = s.producer()
        if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
            return fail("the normalized value is not a residual Add", s)
        a, b = add.inputs
        if _scalar(two) != 2.0:
            return fail("the power is not the constant 2", two)
        rank = len(s.shape) if s.shape is not None else None
        if constant(axes) is None or list(constant(axes).reshape(-1)) not in ([-1], [rank - 1 if rank else -1]):
            return fail("the mean is not over the last axis", axes)
        if mean.producer().attributes.get_int("keepdims", 1) != 1:
            return fail("the mean does not keep its axis", mean)
        if _scalar(eps) is None:
            return fail("epsilon is not a constant scalar", eps)
        k = s.shape[-1] if s.shape is not None else None
        if constant(w) is None or constant(w).shape != (k,):
            return fail("the norm weight is not a constant vector over the last axis", w)
        if a.shape is not None and b.shape is not None and a.shape != b.shape:
            return fail("the residual add broadcasts", s)
        return MatchResult()

    def rewrite(self, op, s, eps, w, **_):
        a, b = s.producer().inputs
        y, _mean, _inv, total = op.SkipSimplifiedLayerNormalization(
            a, b, w, _domain=MS_DOMAIN, epsilon=float(np.float32(_scalar(eps))), _outputs=4)
        total.name, total.shape, total.type = None, s.shape, s.type
        for node, index in list(s.uses()):  # readers outside the norm (the next residual add) read the fused sum
            if node.op_type not in ("Pow", "Mul"):
                node.replace_input_with(index, total)
        return y


RULES = (SkipRMSNorm.rule(),)
