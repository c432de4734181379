"""The speed fusions find every site of the tiny Llama (their numerical identity is checked by the
decode and logits tests of test_deploy.py, which run on the fused folder too)."""

from collections import Counter

import onnx_ir as ir

from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.base import Context
from qpasses.passes.fuse_attention import FuseAttention


def test_every_norm_and_attention_is_fused(fused):
    models, counts = fused
    assert counts == {"fuse.skip_rms_norm": 4,  # 2 layers x 2 norms that follow a residual add
                      "fuse.group_query_attention": 2,
                      "past_length.from_mask": 2}  # the past's batch and length, read from the inputs
    ops = Counter(n.op_type for n in models.decoder.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["Softmax"] == 0
    assert all(v.producer().op_type == "GroupQueryAttention" for v in models.decoder.graph.outputs[1:])  # the cache
    assert Counter(n.op_type for n in models.logits.graph)["SkipSimplifiedLayerNormalization"] == 4


def test_only_the_attention_reads_the_past_so_a_runner_may_share_its_buffer(fused):
    """past_length.from_mask: nothing but GroupQueryAttention reads past_key_values.* (their length comes
    from attention_mask), so a past buffer longer than the past (onnxruntime-genai's
    past_present_share_buffer) cannot reach the mask arithmetic."""
    graph = fused[0].decoder.graph
    past = [v for v in graph.inputs if v.name.startswith("past_key_values.")]
    assert past and {u.node.op_type for v in past for u in v.uses()} == {"GroupQueryAttention"}


def test_an_attention_of_another_shape_stays_with_the_reason(onnx_models):
    """Layer 0's new key cache is no graph output here: its check fails and says so; layer 1 still fuses."""
    decoder = ir.from_proto(ir.to_proto(onnx_models.decoder))
    outputs = decoder.graph.outputs
    outputs.pop(next(i for i, v in enumerate(outputs) if v.name.startswith("present") and "key" in v.name))
    ctx = Context()
    counts = FuseAttention(max_positions=64).run(OnnxStage({"decoder": decoder}), ctx)
    assert counts["fuse.group_query_attention"] == 1
    [miss] = ctx.notes.misses["fuse_attention"]
    assert miss.endswith("the new cache is not a graph output")
    assert Counter(n.op_type for n in decoder.graph)["Softmax"] == 1
