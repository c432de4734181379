"""Expand qpasses.QuantizeActivation into standard ONNX ops (when no kernel fuses it).

Identity: the expansion computes exactly numerics.fake_quant / formats.act, op for op:
int:   code = clip(round(x · (qmax / amax)), −qmax−1, qmax), y = code · (amax / qmax), per block;
mxfp4: X = 2^clamp(floor(log2 amax) − 2, −127, 127), y = sign(x) · min(round(|x|/X / step) · step, 6) · X
       with step 0.5 / 1 / 2 below 2 / 4 / above (E2M1 round-half-even). ONNX Round is half-to-even.
floor(log2 amax) is computed from Log and then corrected with exact powers of two.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.domain import DOMAIN
from qpasses.rules.base import fail
from qpasses.rules.lower_mxfp4_std import const

QMAX = {"int8": 127.0, "int4": 7.0}


def _static_k(x) -> int | None:
    """x's last dimension K when it is static, else None."""
    if x.shape is None or not isinstance(x.shape[-1], int):
        return None
    return x.shape[-1]


class ExpandQuantAct(RewriteRuleClassBase):
    def __init__(self):
        super().__init__("expand.quant_act")

    def pattern(self, op, x):
        return op.QuantizeActivation(x, _domain=DOMAIN, _outputs=["y"])

    def check(self, context, x, y, **_):
        if _static_k(x) is None:
            return fail("the activation's last dimension is not static", x)
        kind = y.producer().attributes.get_string("kind", "")
        if kind not in ("int8", "int4", "mxfp4"):
            return fail(f"unknown activation kind {kind!r}", y)
        return MatchResult()

    def rewrite(self, op, x, y, **_):
        attrs = y.producer().attributes
        kind, block = attrs.get_string("kind"), attrs.get_int("block_size")
        k = _static_k(x)
        block = block or k
        nb = -(-k // block)
        i64 = np.int64
        flat = op.Reshape(x, const(op, [-1, k], i64))
        if nb * block != k:
            flat = op.Pad(flat, const(op, [0, 0, 0, nb * block - k], i64))
        xb = op.Reshape(flat, const(op, [-1, nb, block], i64))
        amax = op.ReduceMax(op.Abs(xb), const(op, [-1], i64), keepdims=1)
        positive = op.Greater(amax, const(op, 0.0))
        if kind == "mxfp4":
            yb = self._mxfp4(op, xb, amax, positive)
        else:
            qmax = const(op, QMAX[kind])
            inv = op.Where(positive, op.Div(qmax, amax), const(op, 0.0))
            code = op.Clip(op.Round(op.Mul(xb, inv)), const(op, -QMAX[kind] - 1), qmax)
            yb = op.Mul(code, op.Div(amax, qmax))
        out = op.Reshape(yb, const(op, [-1, nb * block], i64))
        if nb * block != k:
            out = op.Slice(out, const(op, [0], i64), const(op, [k], i64), const(op, [1], i64))
        return op.Reshape(out, op.Shape(x))

    @staticmethod
    def _mxfp4(op, xb, amax, positive):
        two = const(op, 2.0)
        safe = op.Where(positive, amax, const(op, 1.0))
        e0 = op.Floor(op.Div(op.Log(safe), const(op, math.log(2.0))))
        up = op.Cast(op.LessOrEqual(op.Pow(two, op.Add(e0, const(op, 1.0))), safe), to=ir.DataType.FLOAT)
        down = op.Cast(op.Greater(op.Pow(two, e0), safe), to=ir.DataType.FLOAT)
        e = op.Clip(op.Sub(op.Sub(op.Add(e0, up), down), two), const(op, -127.0), const(op, 127.0))
        scale = op.Pow(two, e)
        a = op.Div(op.Abs(xb), scale)
        step = op.Where(op.Less(a, two), const(op, 0.5), op.Where(op.Less(a, const(op, 4.0)), const(op, 1.0), two))
        mag = op.Min(op.Mul(op.Round(op.Div(a, step)), step), const(op, 6.0))
        return op.Mul(op.Mul(op.Sign(xb), mag), scale)


def expand_rules() -> list:
    return [ExpandQuantAct.rule()]
