"""Move an online block-Hadamard rotation in front of one of our runtime matmuls into the op.

Identity: qpasses.MatMul*(x·diag(s)·(I ⊗ H_b/√b)) = qpasses.MatMul*(x; hadamard_block=b, D=s).
The kernel rotates each row of A (A ⊙ D, an FWHT per block of b, times 1/√b) before quantizing it,
so the exported rotation (Mul by the signs, Reshape [-1, groups, block], MatMul by B, Reshape back;
ir.fx_ops) disappears when B is the normalized Sylvester H_b for a power of two b (the kernel takes
any power of two dividing K; act_bits 0 too). It agrees to float rounding: the butterflies round
differently from a MatMul. A rotation with a left factor (full-width or Kronecker) or another B
fails the check, with the reason. The rotation stays while another reader needs it (the rule
removes no node; the rule set drops the dead ones). A low-rank term (L, R) read the rotated A, so
it gets lowrank_input "rotated".
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.domain import DOMAIN
from qpasses.numerics.hadamard import hadamard_matrix
from qpasses.rules.base import NoMatch, constant, fail, optional_input, producer
from qpasses.runtime.ops import INPUTS, OPS

ATOL = 1e-6  # B equals H_b / sqrt(b) to this (a float32 copy of the float64 matrix)


def _is_normalized_sylvester(right: np.ndarray | None, b: int) -> bool:
    if right is None or right.shape != (b, b):
        return False
    return np.allclose(right.astype(np.float64), hadamard_matrix(b) / np.sqrt(b), rtol=0, atol=ATOL)


def _rotation(node: ir.Node, x: ir.Value, z: ir.Value, right: ir.Value, shape: ir.Value,
              rotated: ir.Value) -> tuple[ir.Value | None, int]:
    """(signs or None, block b) of rotated = Reshape(MatMul(Reshape(Mul(x, s) or x, [-1, g, b]), B), Shape(x))
    in front of `node`; NoMatch with the reason when it cannot fuse."""
    if constant(z) is not None:
        raise NoMatch("the rotation has a left factor (full width or Kronecker), not I ⊗ H_b")
    inner = producer(z, "Reshape")
    dims = constant(inner.inputs[1])
    if dims is None or dims.shape != (3,) or dims[0] != -1:
        raise NoMatch(f"{inner.name} does not reshape to [-1, groups, block]")
    groups, b = int(dims[1]), int(dims[2])
    y, signs = inner.inputs[0], None
    attrs = shape.producer().attributes
    if attrs.get_int("start", 0) != 0 or "end" in attrs:
        raise NoMatch(f"{rotated.producer().name} does not reshape back to the rotation input's shape")
    if y is not x:  # y = Mul(x, signs)
        mul = producer(y, "Mul")
        others = [v for v in mul.inputs if v is not x]
        if len(others) != 1 or constant(others[0]) is None:
            raise NoMatch(f"{mul.name} does not multiply the rotation input by constant signs")
        signs = others[0]
    k = node.attributes["K"].value
    if groups * b != k:
        raise NoMatch(f"the rotation covers {groups}×{b} features, the op reads K={k}")
    if b < 1 or b & (b - 1) or not _is_normalized_sylvester(constant(right), b):
        raise NoMatch(f"{right.name} is not H_{b}/sqrt({b}) for a power of two")
    if signs is not None:
        s = constant(signs)
        if s.shape != (k,) or s.dtype != np.float32 or not np.all(np.abs(s) == 1):
            raise NoMatch(f"{signs.name} is not float32 ±1 [{k}]")
    d = optional_input(node, INPUTS[node.op_type].index("D"))
    if node.attributes.get_int("hadamard_block", 0) or d is not None:
        raise NoMatch(f"{node.name} already rotates its input")
    return signs, b


class FuseRotation(RewriteRuleClassBase):
    """op(rotation(x)) -> op(x; hadamard_block, D) for one of our runtime ops (`op_type`)."""

    def __init__(self, op_type: str):
        super().__init__("fuse.rotation", remove_nodes=False)  # the rotation may have other readers
        self.op_type = op_type

    def pattern(self, op, x, z, right):
        rotated = op.Reshape(op.MatMul(z, right), op.Shape(x, _allow_other_attributes=True, _outputs=["shape"]),
                             _allow_other_attributes=True, _outputs=["rotated"])
        return getattr(op, self.op_type)(rotated, _domain=DOMAIN, _allow_other_inputs=True,
                                         _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, z, right, shape, rotated, y, **_):
        try:
            _rotation(y.producer(), x, z, right, shape, rotated)
        except NoMatch as e:
            return fail(str(e), y.producer())
        return MatchResult()

    def rewrite(self, op, x, z, right, shape, rotated, y, **_):
        node = y.producer()
        signs, block = _rotation(node, x, z, right, shape, rotated)
        names = INPUTS[node.op_type]
        inputs = [x, *node.inputs[1:]]
        attrs = {k: a.value for k, a in node.attributes.items()}
        attrs["hadamard_block"] = block
        if signs is not None:
            d = names.index("D")
            inputs += [None] * (d + 1 - len(inputs))
            inputs[d] = signs
        if optional_input(node, names.index("L")) is not None:
            attrs["lowrank_input"] = "rotated"  # the low-rank term read the rotated A
        out = getattr(op, node.op_type)(*inputs, _domain=DOMAIN, **attrs)
        out.producer().name = node.name  # the op keeps its name (the old node is dropped as dead)
        return out


RULES = tuple(FuseRotation.rule(op_type) for op_type in OPS)
