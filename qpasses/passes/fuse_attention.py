"""fuse_attention: the decoder graph's exported attention -> com.microsoft RotaryEmbedding (q, k)
+ GroupQueryAttention (rules/group_query_attention.py, which states the identity).

Runs on the folded graph; a site of any other shape is left alone, with the reason in the notes.
Stage: onnx, decoder graph only (the logits graph has no cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_ir.passes.common import RemoveUnusedNodesPass

from qpasses.ir.cleanup import finalize
from qpasses.passes.base import Pass
from qpasses.rules.apply import apply_in_order, failures
from qpasses.rules.group_query_attention import rules


@dataclass(frozen=True)
class Settings:
    max_positions: int = 8192  # rows of the rotary cos/sin tables (the model's context length)


class FuseAttention(Pass):
    name = "fuse_attention"
    stages = ("onnx",)
    expects_rewrites = False
    Settings = Settings

    def run(self, graph, ctx):
        model = graph.models.get("decoder")
        if model is None:
            return {}
        finalize(model)  # fold the exporter's shape arithmetic and no-op nodes first (deployment does anyway)
        g = model.graph
        if not {"attention_mask", "position_ids"} <= {v.name for v in g.inputs}:
            return {}
        rule_set = rules(g, self.settings.max_positions)
        counts = apply_in_order(model, rule_set)
        if counts:
            RemoveUnusedNodesPass()(model)
        # A failed check names the Softmax that stays (or the tail it matched); a read Softmax that no
        # tail matched names itself.
        where = [((check.failure_nodes_and_values or [node])[0], check.reason)
                 for _, node, check in failures(model, rule_set)]
        misses = [f"{node.name}: {why}" for node, why in where]
        misses += [f"{n.name}: its readers are not MatMul -> Transpose -> Reshape" for n in g
                   if n.op_type == "Softmax" and n.domain == "" and n.outputs[0].uses()
                   and n not in {node for node, _ in where}]
        if misses:
            ctx.notes.misses["fuse_attention"] = misses[:3]  # why some attention stayed unfused
        return counts
