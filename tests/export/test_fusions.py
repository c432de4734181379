"""The speed fusions find every site of the tiny Llama (their numerical identity is checked by the
decode and logits tests of test_deploy.py, which run on the fused folder too)."""

from collections import Counter


def test_every_norm_and_attention_is_fused(fused):
    models, counts = fused
    assert counts == {"fuse.skip_rms_norm": 4,  # 2 layers x 2 norms that follow a residual add
                      "fuse.group_query_attention": 2}
    ops = Counter(n.op_type for n in models.decoder.graph)
    assert ops["GroupQueryAttention"] == 2 and ops["Softmax"] == 0
    assert all(v.producer().op_type == "GroupQueryAttention" for v in models.decoder.graph.outputs[1:])  # the cache
    assert Counter(n.op_type for n in models.logits.graph)["SkipSimplifiedLayerNormalization"] == 4
