"""Shared pieces of the ONNX lowering rules (onnxscript rewriter: pattern / check / rewrite).

Every rule lowers one linear `y = x · Wᵀ` to a quantized form computing x · dequant(codes)ᵀ,
where dequant(codes) equals the float W the graph held (bit for bit when W came from stage A,
whose codes travel in `plan`). Without a plan a rule quantizes W itself by round-to-nearest,
so the rule sets work on anybody's ONNX model.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.domain import DOMAIN, QUANT_ACT
from qpasses.formats import QuantizedWeight, dequantize_weight, quantize_weight
from qpasses.formats.spec import WeightFormat
from qpasses.ir import onnx_ops  # noqa: F401  (registers the QuantizeActivation schema)


def fail(reason: str, *where) -> MatchResult:
    return MatchResult().fail(reason, list(where) or None)


class NoMatch(Exception):
    """Raised by the structural walks below (and a check's helpers); the message says why."""


def producer(v: ir.Value | None, op: str, domain: str = "") -> ir.Node:
    """The node of type `op` producing v, or NoMatch."""
    node = v.producer() if v is not None else None
    if node is None or node.op_type != op or node.domain != domain:
        raise NoMatch(f"{v.name if v is not None else 'a missing input'} is not produced by {op}")
    return node


def constant(v: ir.Value | None) -> np.ndarray | None:
    """The value of a constant (an initializer or a Constant node's output), else None."""
    t = ir.convenience.get_const_tensor(v) if v is not None else None
    return None if t is None else t.numpy()


def optional_input(node: ir.Node, i: int) -> ir.Value | None:
    """Input i, or None when omitted (trailing optional inputs may be absent from the list)."""
    return node.inputs[i] if i < len(node.inputs) else None


def weight_nk(w: ir.Value, orient: str) -> np.ndarray:
    data = w.const_value.numpy().astype(np.float32, copy=False)
    return data if orient == "nk" else data.T


def on_plan(w: ir.Value, orient: str, q: QuantizedWeight) -> bool:
    """Whether the float weight is exactly its plan's dequantized codes. A weight kept in a mapped
    file (qpasses.offload) gives its pages back once compared."""
    from qpasses.offload import release

    data = weight_nk(w, orient)
    try:
        return bool(np.array_equal(data, dequantize_weight(q)))
    finally:
        release(data)


class LinearRule(RewriteRuleClassBase):
    """Base of the per-layout linear rules. Layouts: "nk" = MatMul(x, Transpose(W[N, K])) (our
    export), "kn" = MatMul(x, W[K, N]) (other exporters), "gemm" / "gemm_bias" = Gemm(x, W[, c])
    with W oriented by transB (2-D inputs). `act` selects the variant whose input is a
    QuantizeActivation. Subclasses implement `lower(op, x, w, q, act)` -> x · dequant(q)ᵀ;
    a Gemm bias is added after it. `lowrank` selects the variant followed by a low-rank branch
    on the float input, Add(linear, MatMul(MatMul(x, L), R)) (FxStage.add_lowrank), which
    `lower(..., lowrank=(L, R))` absorbs; its L, R must hold fp16 values (they are stored so)."""

    rule_name: str
    kinds: tuple[str, ...] = ()
    fuses_act = False  # has a variant that absorbs a QuantizeActivation in front of the matmul
    fuses_lowrank = False  # has variants that absorb a low-rank branch (L, R inputs)

    def __init__(self, layout: str = "nk", act: bool = False, fmt: WeightFormat | None = None,
                 plan: dict | None = None, accuracy_level: int = 0, lowrank: bool = False):
        super().__init__(f"{self.rule_name}{'_act' if act else ''}{'_lr' if lowrank else ''}.{layout}")
        self.layout, self.act, self.fmt, self.plan, self.accuracy_level = layout, act, fmt, plan, accuracy_level
        self.lowrank = lowrank

    def pattern(self, op, x, w, c, lo, ro):
        xf = x
        if self.act:
            x = op.QuantizeActivation(x, _domain=DOMAIN, _outputs=["xq"])
        if self.layout == "nk":
            y = op.MatMul(x, op.Transpose(w), _outputs=["y"])
        elif self.layout == "kn":
            y = op.MatMul(x, w, _outputs=["y"])
        else:
            inputs = (x, w, c) if self.layout == "gemm_bias" else (x, w)
            y = op.Gemm(*inputs, _allow_other_attributes=True, _outputs=["y"])
        return op.Add(y, op.MatMul(op.MatMul(xf, lo), ro)) if self.lowrank else y

    def orient(self, y: ir.Value) -> str:
        """How W is stored: "nk" ([N, K]) or "kn" ([K, N])."""
        if self.layout in ("nk", "kn"):
            return self.layout
        return "nk" if y.producer().attributes.get_int("transB", 0) else "kn"

    def quantized(self, w: ir.Value, orient: str) -> QuantizedWeight | None:
        """The codes behind W: from the stage-A plan, or RTN with this rule's format."""
        if self.plan is not None:
            return self.plan.get(w.name)
        if self.fmt is None or w.const_value is None:
            return None
        return quantize_weight(weight_nk(w, orient), self.fmt)

    def check(self, context, x, w, y, c=None, xq=None, lo=None, ro=None, **_):
        if self.layout.startswith("gemm"):
            attrs = y.producer().attributes
            if (attrs.get_int("transA", 0) or attrs.get_float("alpha", 1.0) != 1.0
                    or attrs.get_float("beta", 1.0) != 1.0):
                return fail("only Gemm with transA = 0, alpha = beta = 1 is a plain linear", y)
        if w.const_value is None or len(w.const_value.shape) != 2:
            return fail(f"{w.name} is not a constant 2-D weight", w)
        orient = self.orient(y)
        q = self.quantized(w, orient)
        if q is None:
            return fail(f"{w.name} has no quantization plan (kept in float)", w)
        if q.fmt.kind not in self.kinds:
            return fail(f"{w.name} is {q.fmt.kind}; this rule lowers {', '.join(self.kinds)}", w)
        if self.plan is not None and not on_plan(w, orient, q):
            return fail(f"{w.name} differs from the dequantized codes of its plan; lowering would change the model", w)
        if self.lowrank:
            why = check_lowrank(w, q, lo, ro)
            if why:
                return fail(why, lo)
        return self.check_lowering(w, q, xq)

    def check_lowering(self, w: ir.Value, q: QuantizedWeight, xq: ir.Value | None):
        """Target-specific conditions; success by default."""
        return MatchResult()

    def rewrite(self, op, x, w, y, c=None, xq=None, lo=None, ro=None, **_):
        extra = {"lowrank": (lo, ro)} if self.lowrank else {}
        out = self.lower(op, x, w, self.quantized(w, self.orient(y)), xq, **extra)
        return op.Add(out, c) if c is not None else out

    @staticmethod
    def act_format(xq: ir.Value) -> tuple[str, int]:
        """(kind, block_size) of the QuantizeActivation producing xq."""
        p = xq.producer()
        return p.attributes.get_string("kind", ""), p.attributes.get_int("block_size", -1)


def check_lowrank(w: ir.Value, q: QuantizedWeight, lo: ir.Value, ro: ir.Value) -> str | None:
    """Why the branch (L, R) cannot become the op's L, R inputs, or None."""
    n, k = q.shape
    if lo.const_value is None or ro.const_value is None:
        return f"{w.name}: the low-rank factors are not constants"
    left, right = lo.const_value.numpy(), ro.const_value.numpy()
    if left.ndim != 2 or right.ndim != 2 or left.shape[0] != k or right.shape != (left.shape[1], n):
        return f"{w.name}: low-rank factors {left.shape} x {right.shape} do not fit [K={k}, r] x [r, N={n}]"
    if any(not np.array_equal(m.astype(np.float16).astype(m.dtype), m) for m in (left, right)):
        return f"{w.name}: the low-rank factors are not fp16 values (the op stores them in fp16)"
    return None


def lowrank_inputs(op, w: ir.Value, lowrank) -> list[ir.Value]:
    """The op's L, R inputs: fp16 initializers, R named after the weight, L after its contents
    (siblings that read one input share one L: optimize_weights solves them jointly)."""
    left, right = (v.const_value.numpy().astype(np.float16) for v in lowrank)
    return [init(op, factor_name(left), left, near=w), init(op, f"{w.name}.lowrank_R", right)]


def factor_name(half: np.ndarray) -> str:
    """A shared low-rank factor's initializer name: equal fp16 contents, one name, one copy."""
    return f"lowrank_L.{hashlib.sha256(np.ascontiguousarray(half).tobytes()).hexdigest()[:16]}"


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


LAYOUTS = ("nk", "kn", "gemm", "gemm_bias")


def variants(cls: type[LinearRule], **kw) -> list:
    """The rule for every weight layout; low-rank and fused-activation variants first, so they win."""
    acts = (True, False) if cls.fuses_act else (False,)
    lowranks = (True, False) if cls.fuses_lowrank else (False,)
    return [cls.rule(layout=layout, act=act, lowrank=lr, **kw) for lr in lowranks for act in acts for layout in LAYOUTS]


__all__ = ["LinearRule", "NoMatch", "QUANT_ACT", "constant", "fail", "init", "optional_input", "producer", "variants",
           "weight_nk"]
