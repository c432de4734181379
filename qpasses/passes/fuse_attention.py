"""fuse_attention: the decoder graph's exported attention -> com.microsoft RotaryEmbedding (q, k)
+ GroupQueryAttention (rules/group_query_attention.py, which states the identity).

Runs on the folded graph; a site of any other shape is left alone, with the reason in the notes.
Stage: onnx, decoder graph only (the logits graph has no cache).

The rotary cos/sin tables have one row per position the decoder can be fed (RotaryEmbedding
refuses a position_ids value beyond them): the model's max_position_embeddings (ctx.positions,
from its config), or the recipe's `max_positions` when set, capped by `--max-context N`; 8192 when
neither is known (an ONNX input). The choice goes to the manifest (`max_context`) and the folder's
README. Once an attention is fused, the graph reads the past's length from the attention mask
(rules/past_length.py), so a runner may share one buffer between past and present. A model whose
rotary frequencies change with the position (rope_scaling "dynamic", "longrope") keeps its
exported rotary: one table cannot represent it.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_ir.passes.common import RemoveUnusedNodesPass

from qpasses.ir.cleanup import finalize
from qpasses.passes.base import Pass, Positions
from qpasses.rules.apply import apply_in_order, failures
from qpasses.rules.group_query_attention import rules
from qpasses.rules.past_length import rules as past_length_rules

DEFAULT_POSITIONS = 8192  # rotary rows when neither the recipe nor the model's config says
POSITION_DEPENDENT = ("dynamic", "longrope")  # rotary kinds whose frequencies change with the position


@dataclass(frozen=True)
class Settings:
    # rows of the rotary cos/sin tables: None (default) takes the model's max_position_embeddings;
    # a number replaces it. --max-context N caps either.
    max_positions: int | None = None

    def __post_init__(self):
        n = self.max_positions
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_positions must be a positive number of positions, got {n!r}")


def table_rows(settings: Settings, positions: Positions) -> int:
    """The rotary tables' rows: the recipe's max_positions, else the model's, else 8192; capped."""
    rows = settings.max_positions or positions.model or DEFAULT_POSITIONS
    return min(rows, positions.cap) if positions.cap else rows


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
        p = ctx.positions
        moving = [t for t in p.rope_types if any(k in t for k in POSITION_DEPENDENT)]
        if moving:
            ctx.notes.misses["fuse_attention"] = [
                f"every attention: rope_scaling {moving[0]!r} changes the rotary frequencies with the position, "
                "which one cos/sin table cannot represent (the exported rotary stays)"]
            return {}
        rows = table_rows(self.settings, p)
        rule_set = rules(g, rows)
        counts = apply_in_order(model, rule_set)
        if counts:
            counts.update(apply_in_order(model, past_length_rules()))
            RemoveUnusedNodesPass()(model)
            ctx.notes.max_context = {"model": p.model, "recipe": self.settings.max_positions, "cap": p.cap,
                                     "rotary_rows": rows}
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
