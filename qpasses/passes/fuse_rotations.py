"""fuse_rotations: an online block-Hadamard rotation in front of a runtime matmul moves into the op
(rules/rotation_ops.py, which states the identity).

Rotations with a left factor (full-width or Kronecker) or another B stay standard ops, with the
reason in the notes; so do a fused rotation's nodes while another reader needs them. Stage: onnx,
after fuse_linears (which leaves ops with a D input alone). Zero rewrites is an error: recipes list
it only where block Hadamards sit in front of quantized linears.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpasses.errors import LoweringError
from qpasses.passes.base import Pass
from qpasses.rules.apply import apply_in_order, failures
from qpasses.rules.rotation_ops import RULES


@dataclass(frozen=True)
class Settings:
    pass


class FuseRotations(Pass):
    name = "fuse_rotations"
    stages = ("onnx",)
    Settings = Settings

    def run(self, graph, ctx):
        counts, misses = {}, []
        for gname, model in graph.models.items():
            counts[gname] = apply_in_order(model, RULES).get("fuse.rotation", 0)  # the rule set drops dead nodes
            misses += [f"{gname}: {node.name}: {check.reason}" for _, node, check in failures(model, RULES)]
        if misses:
            ctx.notes.misses["fuse_rotations"] = misses[:3]  # why some rotations stayed standard ops
        if len(set(counts.values())) > 1:
            raise LoweringError(f"the graphs fused different numbers of rotations: {counts}")
        return {"fuse.rotation": next(iter(counts.values()), 0)}
