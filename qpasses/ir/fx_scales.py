"""Where a per-channel scale on a linear's input can be absorbed offline, found by pattern.

Smoothing (docs/methods.md#channel-scale-folding) divides a linear input x by s channel-wise and multiplies
the reading weights' columns by s; the division must fold into whatever produced x:
    norm      x = n ⊙ γ, γ a 1-D parameter:        (n ⊙ γ) diag(1/s) = n ⊙ (γ / s)
    rows      x = a ⊙ (u Wᵀ + b), W a linear's:     a ⊙ (u (diag(1/s) W)ᵀ + b / s) = x diag(1/s)
              (SwiGLU's silu(gate) ⊙ up: 1/s goes into up_proj's rows; gate's silu cannot take it)
The product must be read by nothing but the linears being scaled (and an online rotation in front
of them, which the scales go before: x diag(1/s) R). Nothing is recognized by module name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.export import ExportedProgram

from qpasses.ir.fx_edit import non_meta_users, parameter_of
from qpasses.ir.fx_flow import LINEAR, SAME, float_cast, skip_casts, token_slice
from qpasses.numerics.rotation import Rotation

aten = torch.ops.aten


@dataclass
class Producer:
    """What absorbs 1/s: a norm scale parameter (kind "norm") or a linear's rows (kind "rows")."""

    kind: str
    parameter: str  # state-dict key of γ, or of the producing linear's weight
    bias: str | None = None  # the producing linear's bias key, if any


def only_read_by(node: torch.fx.Node, allowed: set) -> bool:
    """Every user of `node` (through float casts and token slices) is in `allowed`."""
    for u in non_meta_users(node):
        if u in allowed:
            continue
        if not ((u.target in SAME and float_cast(u)) or token_slice(u)) or not only_read_by(u, allowed):
            return False
    return True


def producer_of(ep: ExportedProgram, x: torch.fx.Node, readers: set) -> Producer | None:
    """The producer of x able to absorb a channel scale, when `readers` are x's only readers."""
    node = skip_casts(x)
    if node.target is not aten.mul.Tensor or not only_read_by(node, readers):
        return None
    args = [a for a in node.args if isinstance(a, torch.fx.Node)]
    for a in args:
        key = parameter_of(ep, a)
        if key is not None and ep.state_dict[key].dim() == 1:
            return Producer("norm", key)
    for a in map(skip_casts, args):
        if a.target is LINEAR and len(non_meta_users(a)) == 1 and parameter_of(ep, a.args[1]):
            bias = a.args[2] if len(a.args) > 2 else None
            return Producer("rows", parameter_of(ep, a.args[1]), parameter_of(ep, bias) if bias is not None else None)
    return None


def rotation_of(ep: ExportedProgram, node: torch.fx.Node) -> Rotation:
    """The Rotation a `qpasses.rotate` node applies, read back from its constants."""
    targets = {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.target is not None}

    def value(arg):
        return None if arg is None else ep.constants[targets[arg.name]].double().numpy()

    signs, left_t, right = (value(a) for a in node.args[1:4])
    groups, block = node.args[4], node.args[5]
    return Rotation(groups * block, right, None if left_t is None else left_t.T, signs)
