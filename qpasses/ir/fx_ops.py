"""The custom ops stage A inserts in front of a linear.

`torch.ops.qpasses.quant_act(x, kind, block_size)` quantizes and dequantizes x along its last
dim with `ActFormat(kind, block_size)` (numerics.fake_quant, bit-identical to formats.act).
It exports to ONNX as one node `qpasses.QuantizeActivation(kind=..., block_size=...)`, which the
lowering rules either fuse into a quantized matmul or expand into standard ops.

`torch.ops.qpasses.rotate(x, signs, left_t, right, groups, block)` is an online rotation
x ↦ x · diag(signs) · (L ⊗ B) with left_t = Lᵀ [groups, groups] and right = B [block, block]
(numerics.rotation): x (L ⊗ B) = vec(Lᵀ X B) for X = x reshaped [groups, block]. It exports to
standard ONNX ops that stock onnxruntime runs: Mul, Reshape, one or two small MatMuls, Reshape.

`tap_node` walks back from a linear through these ops to the tensor a pass or a statistic reads.
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import opset21 as op

from qpasses.domain import DOMAIN, DOMAIN_VERSION
from qpasses.formats.spec import ActFormat
from qpasses.ir import onnx_ops  # noqa: F401  (registers the QuantizeActivation schema)


@torch.library.custom_op("qpasses::quant_act", mutates_args=())
def quant_act(x: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    from qpasses.numerics.fake_quant import fake_quant_activation

    return fake_quant_activation(x, ActFormat(kind, block_size))


@quant_act.register_fake
def _quant_act_fake(x, kind, block_size):
    return torch.empty_like(x)


_opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _translate_quant_act(x: onnxscript.FLOAT, kind: str, block_size: int) -> onnxscript.FLOAT:
    return _opset.QuantizeActivation(x, kind=kind, block_size=block_size)


@torch.library.custom_op("qpasses::rotate", mutates_args=())
def rotate(x: torch.Tensor, signs: torch.Tensor | None, left_t: torch.Tensor | None, right: torch.Tensor,
           groups: int, block: int) -> torch.Tensor:
    y = x * signs if signs is not None else x
    z = y.reshape(-1, groups, block) @ right
    if left_t is not None:
        z = left_t @ z
    return z.reshape(x.shape)


@rotate.register_fake
def _rotate_fake(x, signs, left_t, right, groups, block):
    return torch.empty_like(x)


def _translate_rotate(x: onnxscript.FLOAT, signs, left_t, right: onnxscript.FLOAT, groups: int,
                      block: int) -> onnxscript.FLOAT:
    y = op.Mul(x, signs) if signs is not None else x
    z = op.MatMul(op.Reshape(y, op.Constant(value_ints=[-1, groups, block])), right)
    if left_t is not None:
        z = op.MatMul(left_t, z)
    return op.Reshape(z, op.Shape(x))


TRANSLATIONS = {torch.ops.qpasses.quant_act.default: _translate_quant_act,
                torch.ops.qpasses.rotate.default: _translate_rotate}


TAPS = {"float": torch.ops.qpasses.quant_act.default, "unrotated": torch.ops.qpasses.rotate.default}


def tap_node(linear: torch.fx.Node, tap: str = "input") -> torch.fx.Node:
    """The node whose first argument is the tapped tensor in front of `linear`: the linear itself
    ("input"), else a quant_act ("float") and then a rotate ("unrotated") in front of it, if any."""
    node = linear
    for step in ("float", "unrotated")[: ("input", "float", "unrotated").index(tap)]:
        x = node.args[0]
        if isinstance(x, torch.fx.Node) and x.target is TAPS[step]:
            node = x
    return node
