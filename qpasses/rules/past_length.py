"""Read the past's length from the attention mask, not from the past tensors' shape.

Identity relied on (the step graph's input contract: attention_mask [B, P+S] covers the past and
the new tokens, input_ids [B, S]):
  Shape(past_key_values.i.*)[2] = P = Shape(attention_mask)[1] − Shape(input_ids)[1],
  Shape(past_key_values.i.*)[0] = B = Shape(input_ids)[0].

Why: a runner that shares one buffer between past and present (onnxruntime-genai's
`past_present_share_buffer`) feeds the past as [B, Hkv, max_length, D] and the mask as [B, P+S];
GroupQueryAttention reads the lengths from the mask (seqlens_k, total_sequence_length), but the
exported mask arithmetic reads P from the buffer's shape and indexes past the mask. After this
rewrite nothing but the attention reads the past tensors. Applied once every attention is fused
(an unfused attention concatenates the past itself and could not share a buffer anyway).
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.rules.base import fail

PAST_PREFIX = "past_key_values."
BATCH, LENGTH = 0, 2  # the past's axes a graph reads: [B, Hkv, P, D]


def _axis(node: ir.Node) -> int | None:
    """The one axis Shape(x, start, end) returns, or None when it returns several (or none)."""
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
    return start if end == start + 1 else None


class PastLengthFromMask(RewriteRuleClassBase):
    """Shape(past_key_values.*, axis 0 or 2) -> Shape(input_ids)[0] / Shape(attention_mask)[1] − Shape(input_ids)[1]."""

    def __init__(self):
        super().__init__("past_length.from_mask")

    def pattern(self, op, past):
        return op.Shape(past, _allow_other_attributes=True, _outputs=["dims"])

    def check(self, context, past, dims, **_):
        graph, node = dims.graph, dims.producer()
        if past not in graph.inputs or not (past.name or "").startswith(PAST_PREFIX):
            return fail(f"{past.name} is not a past_key_values graph input", node)
        names = {v.name for v in graph.inputs}
        if not {"attention_mask", "input_ids"} <= names:
            return fail("the graph has no attention_mask and input_ids inputs to read the lengths from", node)
        if _axis(node) not in (BATCH, LENGTH):
            return fail(f"{node.name} reads axes other than the past's batch or length", node)
        return MatchResult()

    def rewrite(self, op, past, dims, **_):
        graph = dims.graph
        ids, mask = (next(v for v in graph.inputs if v.name == n) for n in ("input_ids", "attention_mask"))
        if _axis(dims.producer()) == BATCH:
            return op.Shape(ids, start=0, end=1)
        return op.Sub(op.Shape(mask, start=1, end=2), op.Shape(ids, start=1, end=2))


def rules() -> tuple:
    return (PastLengthFromMask.rule(),)
