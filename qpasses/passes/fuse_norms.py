"""fuse_norms: residual add + RMSNorm -> one SkipSimplifiedLayerNormalization (rules/skip_rmsnorm.py).

Identity relied on: stated by the rule; the fused kernel agrees to float rounding. Dead nodes left
behind are removed. Stage: onnx. Zero rewrites is allowed (models without RMSNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_ir.passes.common import RemoveUnusedNodesPass

from qpasses.errors import LoweringError
from qpasses.ir.cleanup import finalize
from qpasses.passes.base import Pass
from qpasses.rules.apply import apply_in_order
from qpasses.rules.skip_rmsnorm import RULES


@dataclass(frozen=True)
class Settings:
    pass


class FuseNorms(Pass):
    name = "fuse_norms"
    stages = ("onnx",)
    expects_rewrites = False
    Settings = Settings

    def run(self, graph, ctx):
        counts = {}
        for gname, model in graph.models.items():
            finalize(model)  # fold the exporter's shape arithmetic and no-op nodes first (deployment does anyway)
            counts[gname] = apply_in_order(model, RULES)
            RemoveUnusedNodesPass()(model)
        first = next(iter(counts.values()), {})
        if any(c != first for c in counts.values()):
            raise LoweringError(f"the graphs fused different numbers of norms: {counts}")
        return first
