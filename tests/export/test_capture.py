import pytest
import torch

from qpasses.export.capture import capture
from qpasses.offload import mapped_bytes, release


def left_padded(batch=2, seq=7, pad=3, seed=1):
    ids = torch.randint(3, 259, (batch, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


def empty_past(model, batch):
    """past_key_values of length 0: [batch, kv_heads, 0, head_dim] per layer."""
    with torch.no_grad():
        cache = model(input_ids=torch.ones(batch, 1, dtype=torch.long), use_cache=True).past_key_values
    return [(layer.keys[:, :, :0], layer.values[:, :, :0]) for layer in cache.layers]


def test_logits_program_equals_the_model_exactly(tiny, programs):
    ids, mask = left_padded()
    with torch.no_grad():
        assert torch.equal(programs.logits.module()(ids, mask), tiny(input_ids=ids, attention_mask=mask).logits)


def test_decoder_program_prefills_from_an_empty_cache_and_decodes(tiny, programs):
    step = programs.decoder.module()
    ids = torch.randint(3, 259, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = tiny(input_ids=ids).logits
        for prompt in (1, 4):  # a one-token prompt needs the widened mask bound (past 0 + seq 1)
            ones = torch.ones(1, prompt, dtype=torch.long)
            logits, present = step(ids[:, :prompt], ones, torch.arange(prompt)[None], empty_past(tiny, 1))
            torch.testing.assert_close(logits, full[:, :prompt], atol=1e-5, rtol=0)
        logits, _ = step(ids[:, 4:5], torch.ones(1, 5, dtype=torch.long), torch.tensor([[4]]), present)
    torch.testing.assert_close(logits, full[:, 4:5], atol=1e-5, rtol=0)
    assert present[0][0].shape[2] == 4


def test_linear_nodes_are_found_by_pattern_in_both_programs(programs):
    found = programs.linear_nodes()
    attn = {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    mlp = {f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(found) == attn | mlp | {"lm_head"}
    for uses in found.values():
        assert sorted(prog for prog, _ in uses) == ["decoder", "logits"]
        assert all(node.target is torch.ops.aten.linear.default for _, node in uses)


def test_tied_weights_have_one_canonical_name(programs):
    assert programs.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert programs.parameter("lm_head.weight") is programs.parameter("model.embed_tokens.weight")
    _, node = programs.linear_nodes()["lm_head"][0]
    key = programs.logits.graph_signature.inputs_to_parameters[node.args[1].name]
    assert programs.fqn(key) == "model.embed_tokens.weight"


def test_no_packed_sequence_check_in_either_program(programs):
    for ep in programs.programs().values():
        targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
        assert torch.ops.aten.cumsum.default not in targets and torch.ops.aten.diff.default not in targets


def test_set_parameter_edits_both_programs_and_leaves_the_model_alone(tiny, programs):
    name = "model.layers.1.mlp.down_proj.weight"
    old = programs.parameter(name)
    ids, mask = left_padded()
    with torch.no_grad():
        before = programs.logits.module()(ids, mask)
        programs.set_parameter(name, old * 0.5)
        try:
            assert not torch.equal(programs.logits.module()(ids, mask), before)
            assert torch.equal(programs.decoder.state_dict[name], old * 0.5)
            assert torch.equal(tiny.get_parameter(name), old)
        finally:
            programs.set_parameter(name, old)
        assert torch.equal(programs.logits.module()(ids, mask), before)


def test_set_parameter_rejects_a_different_shape_or_unknown_name(programs):
    with pytest.raises(ValueError, match="expected"):
        programs.set_parameter("model.norm.weight", torch.ones(3))
    with pytest.raises(KeyError, match="no parameter"):
        programs.parameter("model.nope.weight")


def test_an_encoder_gets_a_logits_like_program_and_no_decoder():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model = BertModel(cfg).eval()
    programs = capture(model)
    assert programs.decoder is None
    assert programs.io_names["logits"] == (["input_ids", "attention_mask"], ["last_hidden_state"])
    assert "encoder.layer.0.attention.self.query" in programs.linear_nodes()
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        assert torch.equal(programs.logits.module()(ids, mask), model(input_ids=ids, attention_mask=mask)[0])


def test_programs_do_not_keep_the_model_alive():
    # The pipeline drops the model after capture, so that stage A's replaced weights are freed
    # rather than kept as a second copy; this holds only if the programs do not refer to it.
    import gc
    import weakref

    from qpasses.models.tiny import build_tiny_llama

    model = build_tiny_llama("tiny-llama", seed=3)
    programs, ref = capture(model), weakref.ref(model)
    old = programs.parameter("model.layers.0.mlp.down_proj.weight")
    del model
    gc.collect()
    assert ref() is None
    programs.set_parameter("model.layers.0.mlp.down_proj.weight", old + 1)
    old_ref = weakref.ref(old)
    del old
    gc.collect()
    assert old_ref() is None  # the replaced tensor is freed


def test_set_parameter_keeps_its_copy_in_a_mapped_file(programs):
    name = "model.layers.0.mlp.down_proj.weight"
    old = programs.parameter(name)
    ids = torch.randint(3, 259, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = programs.logits.module()(ids, mask)
        mapped = mapped_bytes()
        programs.set_parameter(name, old.clone())
        assert mapped_bytes() - mapped == old.numel() * 4
        release()  # its pages are read again from the file
        assert torch.equal(programs.logits.module()(ids, mask), before)


def test_a_model_torch_export_cannot_trace_is_one_line_naming_the_program(tiny, monkeypatch):
    from qpasses.errors import InputError

    def refuse(*args, **kwargs):
        raise RuntimeError("Constraints violated (sequence_length)!\nthe details")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(InputError) as err:
        capture(tiny)
    message = str(err.value)
    assert "\n" not in message
    assert "cannot capture the logits program of this llama model" in message
    assert "torch says: Constraints violated (sequence_length)!" in message and "docs/families.md" in message
