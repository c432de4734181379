"""Sliding-window attention (Mistral, Gemma 2 / 3's local layers) captured with a full cache and the
window in the mask: the KV-cache step program equals the Hugging Face model past the window, in torch
and, with attention fused, in onnxruntime. Gemma's norms read as norms."""

import pytest
import torch

from qpasses.export.capture import capture
from qpasses.models.families import build_family

WINDOW, PROMPT, TOTAL = 8, 12, 20  # the prompt and every decoded token lie past the window


def empty_past(model):
    with torch.no_grad():
        cache = model(input_ids=torch.ones(1, 1, dtype=torch.long), use_cache=True).past_key_values
    return [(layer.keys[:, :, :0], layer.values[:, :, :0]) for layer in cache.layers]


@pytest.mark.parametrize("family", ["mistral-sliding", "gemma2", "gemma3"])
def test_the_step_program_equals_the_model_past_the_window(family):
    model, _ = build_family(family, sliding_window=WINDOW)
    programs = capture(model)
    ids = torch.randint(3, 259, (1, TOTAL), generator=torch.Generator().manual_seed(0))
    ones = torch.ones(1, TOTAL, dtype=torch.long)
    step = programs.decoder.module()
    with torch.no_grad():
        full = model(input_ids=ids).logits  # Hugging Face's own sliding cache and mask
        wide = build_family(family, sliding_window=64)[0](input_ids=ids).logits  # same weights, no window here
        assert not torch.allclose(full[:, WINDOW:], wide[:, WINDOW:], atol=1e-3)  # the window matters
        torch.testing.assert_close(programs.logits.module()(ids, ones), full, atol=1e-5, rtol=0)
        logits, past = step(ids[:, :PROMPT], ones[:, :PROMPT], torch.arange(PROMPT)[None], empty_past(model))
        torch.testing.assert_close(logits, full[:, :PROMPT], atol=1e-5, rtol=0)
        for t in range(PROMPT, TOTAL):
            logits, past = step(ids[:, t:t + 1], ones[:, :t + 1], torch.tensor([[t]]), past)
            torch.testing.assert_close(logits, full[:, t:t + 1], atol=1e-5, rtol=0)
    assert all(k.shape[2] == v.shape[2] == TOTAL for k, v in past)  # every layer keeps its whole past


@pytest.mark.parametrize("family, config, softcap, tables", [
    ("gemma2", {"attn_logit_softcapping": 0.5, "query_pre_attn_scalar": 4}, 0.5, 1),  # a cap that matters (1e-3)
    ("gemma3", {}, None, 2),  # q / k RMSNorm before the rotary; a local rotary base on the sliding layer
])
def test_gemma_attention_fuses_and_decodes_past_the_window(family, config, softcap, tables, tmp_path, ort_session):
    from qpasses.evaluate.decoder import Decoder
    from qpasses.export.deploy import save_deployment
    from qpasses.export.onnx_export import to_onnx
    from qpasses.ir.cleanup import finalize
    from qpasses.ir.onnx_stage import OnnxStage
    from qpasses.models.tiny import build_byte_tokenizer
    from qpasses.passes.base import Context
    from qpasses.passes.fuse_attention import FuseAttention

    model, _ = build_family(family, sliding_window=WINDOW, **config)
    models = to_onnx(capture(model))
    stage = OnnxStage({"logits": models.logits, "decoder": models.decoder})
    assert FuseAttention(max_positions=64).run(stage, Context())["fuse.group_query_attention"] == 2
    g = models.decoder.graph
    assert not any(n.op_type == "Softmax" for n in g)
    caps = [n.attributes["softcap"].value if "softcap" in n.attributes else None
            for n in g if n.op_type == "GroupQueryAttention"]
    assert caps == [softcap] * 2
    assert sum(name.startswith("qpasses.rope.cos") for name in g.initializers) == tables
    finalize(models.logits)
    save_deployment(models, tmp_path / family, build_byte_tokenizer(), {"qpasses.recipe": "test"})
    step = Decoder(ort_session(tmp_path / family / "model.onnx"))
    ids = torch.randint(3, 259, (TOTAL,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    last, past = step.run(ids[:PROMPT], None, 0)
    for t in range(PROMPT, TOTAL):
        assert abs(last - full[t - 1]).max() < 1e-5
        last, past = step.run([ids[t]], past, t)
    assert abs(last - full[-1]).max() < 1e-5


def test_gemma_norms_are_found_by_pattern():
    """Gemma's RMSNorm scales by 1 + γ and casts back with type_as: the linears it feeds read a norm."""
    from qpasses.ir.fx_flow import head_paths
    from qpasses.passes.rotate_inputs import input_class

    ep = capture(build_family("gemma2")[0], decoder=False).logits
    readers = {r for path in head_paths(ep) for r in path.readers}
    classes = {next(reversed(node.meta["nn_module_stack"].values()))[0].split(".")[-1]: input_class(node, readers)
               for node in ep.graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default)}
    assert classes == {"q_proj": "norm", "k_proj": "norm", "v_proj": "norm", "o_proj": "attention",
                       "gate_proj": "norm", "up_proj": "norm", "down_proj": "other", "lm_head": "norm"}
