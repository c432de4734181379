"""Where a per-channel scale on a linear's input can be absorbed offline, found by pattern.

Smoothing (docs/methods.md#channel-scale-folding) divides a linear input x by s channel-wise and multiplies
the reading weights' columns by s; the division must fold into whatever produced x:
    norm      x = n ⊙ γ, γ a 1-D parameter:        (n ⊙ γ) diag(1/s) = n ⊙ (γ / s)
              x = n ⊙ γ + β (a LayerNorm):           (n ⊙ γ + β) diag(1/s) = n ⊙ (γ / s) + β / s
    rows      x = a ⊙ (u Wᵀ + b), W a linear's:     a ⊙ (u (diag(1/s) W)ᵀ + b / s) = x diag(1/s)
              (SwiGLU's silu(gate) ⊙ up: 1/s goes into up_proj's rows; gate's silu cannot take it)
              x = relu(u Wᵀ + b):                    relu(u (diag(1/s) W)ᵀ + b / s) = x diag(1/s), s > 0
    slice     u Wᵀ + b read in last-dim pieces (a fused gate_up_proj's chunk, a qkv slice): only the
              rows [a, b) that make the piece are scaled, when no other piece reads them
The product must be read by nothing but the linears being scaled (and an online rotation in front
of them, which the scales go before: x diag(1/s) R). Nothing is recognized by module name.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.export import ExportedProgram

from qpasses.ir.fx_edit import non_meta_users, parameter_of
from qpasses.ir.fx_flow import LINEAR, SAME, float_cast, is_last, skip_casts, token_op
from qpasses.numerics.rotation import Rotation

aten = torch.ops.aten


@dataclass
class Producer:
    """What absorbs 1/s: a norm scale parameter (kind "norm") or a linear's rows (kind "rows")."""

    kind: str
    parameter: str  # state-dict key of γ, or of the producing linear's weight
    bias: str | None = None  # the LayerNorm's β or the producing linear's bias key, if any
    rows: tuple[int, int] | None = None  # the rows [a, b) making a piece of a fused linear; None: all


def only_read_by(node: torch.fx.Node, allowed: set) -> bool:
    """Every user of `node` (through float casts and token slices) is in `allowed`."""
    for u in non_meta_users(node):
        if u in allowed:
            continue
        if not ((u.target in SAME and float_cast(u)) or token_op(u)) or not only_read_by(u, allowed):
            return False
    return True


def producer_of(ep: ExportedProgram, x: torch.fx.Node, readers: set) -> Producer | None:
    """The producer of x able to absorb a channel scale, when `readers` are x's only readers."""
    node = skip_casts(x)
    if node.target not in (aten.mul.Tensor, aten.layer_norm.default, aten.relu.default):
        return None
    if not only_read_by(node, readers):
        return None
    if node.target is aten.layer_norm.default:  # (input, shape, weight, bias, eps)
        gamma, beta = (parameter_of(ep, a) for a in (*node.args[2:4], None, None)[:2])
        return Producer("norm", gamma, beta) if gamma is not None else None
    if node.target is aten.relu.default:
        return _rows(ep, skip_casts(node.args[0]))
    args = [a for a in node.args if isinstance(a, torch.fx.Node)]
    for a in args:
        key = parameter_of(ep, a)
        if key is not None and ep.state_dict[key].dim() == 1:
            return Producer("norm", key)
    for a in map(skip_casts, args):
        producer = _rows(ep, a)
        if producer is not None:
            return producer
    return None


def _piece(node: torch.fx.Node) -> tuple[torch.fx.Node, int, int] | None:
    """(source, a, b) when `node` is channels [a, b) of its source's last dim: a step-1 slice or a chunk item."""
    if node.target is aten.slice.Tensor and is_last(node.args[1], node.args[0].meta["val"].dim()):
        src, given = node.args[0], node.args[2:5]
        start, end, step = (*given, *(None, None, 1)[len(given):])
        a, b, _ = slice(start, end).indices(int(src.meta["val"].shape[-1]))
        return (src, a, b) if step == 1 else None
    chunk = node.args[0] if node.target is operator.getitem else None
    if getattr(chunk, "target", None) is aten.chunk.default:
        src = chunk.args[0]
        if is_last(chunk.args[2] if len(chunk.args) > 2 else 0, src.meta["val"].dim()):
            size = -(-int(src.meta["val"].shape[-1]) // chunk.args[1])  # torch.chunk: ceil(n / chunks) each
            a = node.args[1] * size
            return src, a, a + int(node.meta["val"].shape[-1])
    return None


def _rows(ep: ExportedProgram, node: torch.fx.Node) -> Producer | None:
    """The rows of the linear that make `node` (its output, or one piece of it), read once."""
    lin, a, b = _piece(node) or (node, 0, None)
    if lin.target is not LINEAR or len(non_meta_users(node)) != 1 or not parameter_of(ep, lin.args[1]):
        return None
    if node is not lin:
        chunked = (non_meta_users(u) if u.target is aten.chunk.default else [u] for u in non_meta_users(lin))
        for other in (_piece(p) for users in chunked for p in users if p is not node):
            if other is None or other[0] is not lin or (other[1] < b and a < other[2]):
                return None
    bias = parameter_of(ep, lin.args[2]) if len(lin.args) > 2 else None
    return Producer("rows", parameter_of(ep, lin.args[1]), bias, None if node is lin else (a, b))


def rotation_of(ep: ExportedProgram, node: torch.fx.Node) -> Rotation:
    """The Rotation a `qpasses.rotate` node applies, read back from its constants."""
    targets = {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.target is not None}

    def value(arg):
        return None if arg is None else ep.constants[targets[arg.name]].double().numpy()

    signs, left_t, right = (value(a) for a in node.args[1:4])
    groups, block = node.args[4], node.args[5]
    return Rotation(groups * block, right, None if left_t is None else left_t.T, signs)
