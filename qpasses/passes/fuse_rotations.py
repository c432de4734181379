"""fuse_rotations: an online block-Hadamard rotation in front of a runtime matmul moves into the op.

Identity relied on: qpasses.MatMul*(x·diag(s)·(I ⊗ H_b/√b)) = qpasses.MatMul*(x; hadamard_block=b, D=s).
The kernel rotates each row of A (A ⊙ D, an FWHT per block of b, times 1/√b) before quantizing it,
so the exported rotation (Mul by the signs, Reshape [-1, groups, block], MatMul by B, Reshape back;
ir.fx_ops) disappears when B is the normalized Sylvester H_b for a power of two b (the kernel takes
any power of two dividing K; act_bits 0 too). It agrees to float rounding: the butterflies round
differently from a MatMul. Rotations with a left factor (full-width or Kronecker) or another B stay
(the reason in the notes); so do a fused rotation's nodes while another reader needs them. A low-rank
term (L, R) read the rotated A, so it gets lowrank_input "rotated". Stage: onnx, after fuse_linears
(which leaves ops with a D input alone). Zero rewrites is an error: recipes list it only where
block Hadamards sit in front of quantized linears.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qpasses.domain import DOMAIN
from qpasses.errors import LoweringError
from qpasses.numerics.hadamard import hadamard_matrix
from qpasses.passes.base import Pass
from qpasses.runtime.ops import INPUTS, OPS

ATOL = 1e-6  # B equals H_b / sqrt(b) to this (a float32 copy of the float64 matrix)


@dataclass(frozen=True)
class Settings:
    pass


class NoMatch(Exception):
    pass


@dataclass
class Fusion:
    x: ir.Value  # the rotation's input
    signs: ir.Value | None  # the float32 [K] constant, or None without the Mul
    block: int


def _producer(v: ir.Value | None, op: str) -> ir.Node:
    node = v.producer() if v is not None else None
    if node is None or node.op_type != op or node.domain != "":
        raise NoMatch(f"{v.name if v is not None else 'a missing input'} is not produced by {op}")
    return node


def _const(v: ir.Value | None) -> np.ndarray | None:
    t = ir.convenience.get_const_tensor(v) if v is not None else None
    return None if t is None else t.numpy()


def _input(node: ir.Node, name: str) -> ir.Value | None:
    i = INPUTS[node.op_type].index(name)
    return node.inputs[i] if i < len(node.inputs) else None


def _is_normalized_sylvester(right: np.ndarray | None, b: int) -> bool:
    if right is None or right.shape != (b, b):
        return False
    return np.allclose(right.astype(np.float64), hadamard_matrix(b) / np.sqrt(b), rtol=0, atol=ATOL)


def match(node: ir.Node) -> Fusion | None:
    """None when input A is not an online rotation's output; NoMatch (with the reason) when it is one that
    cannot fuse: out = Reshape(MatMul(Reshape(Mul(x, s) or x, [-1, g, b]), B), Shape(x))."""
    out = node.inputs[0].producer() if node.inputs[0] is not None else None
    if out is None or out.op_type != "Reshape" or out.domain != "" or len(out.inputs) < 2:
        return None
    shape, mm = (v.producer() if v is not None else None for v in out.inputs[1::-1])
    if any(n is None or n.op_type != op or n.domain != "" for n, op in ((shape, "Shape"), (mm, "MatMul"))):
        return None
    z, right = mm.inputs
    if _const(z) is not None:
        raise NoMatch("the rotation has a left factor (full width or Kronecker), not I ⊗ H_b")
    inner = _producer(z, "Reshape")
    dims = _const(inner.inputs[1])
    if dims is None or dims.shape != (3,) or dims[0] != -1:
        raise NoMatch(f"{inner.name} does not reshape to [-1, groups, block]")
    groups, b = int(dims[1]), int(dims[2])
    x, y, signs = shape.inputs[0], inner.inputs[0], None
    if shape.attributes.get_int("start", 0) != 0 or "end" in shape.attributes:
        raise NoMatch(f"{out.name} does not reshape back to the rotation input's shape")
    if y is not x:  # y = Mul(x, signs)
        mul = _producer(y, "Mul")
        others = [v for v in mul.inputs if v is not x]
        if len(others) != 1 or _const(others[0]) is None:
            raise NoMatch(f"{mul.name} does not multiply the rotation input by constant signs")
        signs = others[0]
    k = node.attributes["K"].value
    if groups * b != k:
        raise NoMatch(f"the rotation covers {groups}×{b} features, the op reads K={k}")
    if b < 1 or b & (b - 1) or not _is_normalized_sylvester(_const(right), b):
        raise NoMatch(f"{right.name} is not H_{b}/sqrt({b}) for a power of two")
    if signs is not None:
        s = _const(signs)
        if s.shape != (k,) or s.dtype != np.float32 or not np.all(np.abs(s) == 1):
            raise NoMatch(f"{signs.name} is not float32 ±1 [{k}]")
    if node.attributes.get_int("hadamard_block", 0) or _input(node, "D") is not None:
        raise NoMatch(f"{node.name} already rotates its input")
    return Fusion(x, signs, b)


def fuse(node: ir.Node, f: Fusion) -> None:
    node.replace_input_with(0, f.x)
    node.attributes["hadamard_block"] = ir.AttrInt64("hadamard_block", f.block)
    if f.signs is not None:
        d = INPUTS[node.op_type].index("D")
        if len(node.inputs) <= d:
            node.resize_inputs(d + 1)
        node.replace_input_with(d, f.signs)
    if _input(node, "L") is not None:
        node.attributes["lowrank_input"] = ir.AttrString("lowrank_input", "rotated")  # it read the rotated A


class FuseRotations(Pass):
    name = "fuse_rotations"
    stages = ("onnx",)
    Settings = Settings

    def run(self, graph, ctx):
        counts, misses = {}, []
        for gname, model in graph.models.items():
            n = 0
            for node in list(model.graph):
                if node.domain != DOMAIN or node.op_type not in OPS:
                    continue
                try:
                    f = match(node)
                except NoMatch as e:
                    misses.append(f"{gname}: {node.name}: {e}")
                    continue
                if f is not None:
                    fuse(node, f)
                    n += 1
            if n:
                RemoveUnusedNodesPass()(model)  # rotations no other node reads
            counts[gname] = n
        if misses:
            ctx.notes["fuse_rotations"] = misses[:3]  # why some rotations stayed standard ops
        if len(set(counts.values())) > 1:
            raise LoweringError(f"the graphs fused different numbers of rotations: {counts}")
        return {"fuse.rotation": next(iter(counts.values()), 0)}
