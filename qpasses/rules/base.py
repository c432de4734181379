"""Shared pieces of the ONNX lowering rules (onnxscript rewriter: pattern / check / rewrite).

Every rule lowers one linear `y = x · Wᵀ` to a quantized form computing x · dequant(codes)ᵀ,
where dequant(codes) equals the float W the graph held (bit for bit when W came from stage A,
whose codes travel in `plan`). Without a plan a rule quantizes W itself by round-to-nearest,
so the rule sets work on anybody's ONNX model.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from qpasses.formats import QuantizedWeight, dequantize_weight, quantize_weight
from qpasses.formats.spec import WeightFormat
from qpasses.ir.fx_ops import DOMAIN, QUANT_ACT


def fail(reason: str, *where) -> MatchResult:
    return MatchResult().fail(reason, list(where) or None)


def weight_nk(w: ir.Value, layout: str) -> np.ndarray:
    data = w.const_value.numpy().astype(np.float32, copy=False)
    return data if layout == "nk" else data.T


class LinearRule(RewriteRuleClassBase):
    """Base of the per-layout linear rules. `layout` is "nk" for MatMul(x, Transpose(W[N, K])) and
    "kn" for MatMul(x, W[K, N]); `act` is True for the variant whose input is a QuantizeActivation."""

    rule_name: str
    kinds: tuple[str, ...] = ()
    fuses_act = False  # has a variant that absorbs a QuantizeActivation in front of the matmul

    def __init__(self, layout: str = "nk", act: bool = False, fmt: WeightFormat | None = None,
                 plan: dict | None = None, accuracy_level: int = 0):
        super().__init__(f"{self.rule_name}{'_act' if act else ''}.{layout}")
        self.layout, self.act, self.fmt, self.plan, self.accuracy_level = layout, act, fmt, plan, accuracy_level

    def pattern(self, op, x, w):
        if self.act:
            x = op.QuantizeActivation(x, _domain=DOMAIN, _outputs=["xq"])
        return op.MatMul(x, op.Transpose(w) if self.layout == "nk" else w)

    def quantized(self, w: ir.Value) -> QuantizedWeight | None:
        """The codes behind W: from the stage-A plan, or RTN with this rule's format."""
        if self.plan is not None:
            return self.plan.get(w.name)
        if self.fmt is None or w.const_value is None:
            return None
        return quantize_weight(weight_nk(w, self.layout), self.fmt)

    def check_weight(self, w: ir.Value):
        """Common checks; returns the QuantizedWeight or a failed MatchResult."""
        if w.const_value is None or len(w.const_value.shape) != 2:
            return fail(f"{w.name} is not a constant 2-D weight", w)
        q = self.quantized(w)
        if q is None:
            return fail(f"{w.name} has no quantization plan (kept in float)", w)
        if q.fmt.kind not in self.kinds:
            return fail(f"{w.name} is {q.fmt.kind}; this rule lowers {', '.join(self.kinds)}", w)
        if self.plan is not None and not np.array_equal(weight_nk(w, self.layout), dequantize_weight(q)):
            return fail(f"{w.name} differs from the dequantized codes of its plan; lowering would change the model", w)
        return q

    def check(self, context, x, w, **_):
        q = self.check_weight(w)
        return q if isinstance(q, MatchResult) else MatchResult()

    @staticmethod
    def act_format(xq: ir.Value) -> tuple[str, int]:
        """(kind, block_size) of the QuantizeActivation producing xq."""
        p = xq.producer()
        return p.attributes.get_string("kind", ""), p.attributes.get_int("block_size", -1)


def init(op, name: str, array: np.ndarray, dtype: ir.DataType | None = None, near: ir.Value | None = None) -> ir.Value:
    """An initializer with a deterministic name (the two graphs of a model share it by name).

    If `near`'s graph already holds an initializer of that name (a tied embedding and lm_head
    lowered from the same codes), that one is reused after checking its bytes are the same.
    """
    existing = near.graph.initializers.get(name) if near is not None and near.graph is not None else None
    if existing is not None:
        if existing.const_value is None or existing.const_value.tobytes() != np.ascontiguousarray(array).tobytes():
            raise ValueError(f"initializer {name} exists with other contents")
        return existing
    return op.initializer(ir.Tensor(array, dtype=dtype, name=name), name=name)


def variants(cls: type[LinearRule], **kw) -> list:
    """The rule for both weight layouts; fused-activation variants first, so they win."""
    acts = (True, False) if cls.fuses_act else (False,)
    return [cls.rule(layout=layout, act=act, **kw) for act in acts for layout in ("nk", "kn")]


__all__ = ["LinearRule", "QUANT_ACT", "fail", "init", "variants", "weight_nk"]
