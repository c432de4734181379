import ast
import dataclasses

import numpy as np
import onnx_ir as ir
import torch

from qpasses.export.onnx_export import to_onnx

SCOPES = "pkg.torch.onnx.name_scopes"


def linear_weights(graph: ir.Graph) -> dict[str, str]:
    """module path (from the exporter's name scopes) -> weight initializer, for MatMul(x, Transpose(W))."""
    found = {}
    for node in graph:
        if node.op_type != "MatMul":
            continue
        t = node.inputs[1].producer()
        if t is not None and t.op_type == "Transpose" and t.inputs[0].is_initializer():
            module = ast.literal_eval(node.metadata_props[SCOPES])[-2]
            found[module] = t.inputs[0].name
    return found


def test_every_linear_weight_initializer_is_named_by_its_fqn(programs, onnx_models):
    modules = set(programs.linear_nodes())
    for model in (onnx_models.logits, onnx_models.decoder):
        weights = linear_weights(model.graph)
        assert set(weights) == modules
        for module, init in weights.items():
            assert init == programs.fqn(f"{module}.weight")
            assert init == f"{module}.weight" or module == "lm_head"  # the tied head reads the embedding table


def test_the_tied_table_is_one_initializer_for_gather_and_lm_head(onnx_models):
    for model in (onnx_models.logits, onnx_models.decoder):
        table = model.graph.initializers["model.embed_tokens.weight"]
        assert "lm_head.weight" not in model.graph.initializers
        assert sorted(use.node.op_type for use in table.uses()) == ["Gather", "Transpose"]
        assert sum(v.shape == table.shape for v in model.graph.initializers.values()) == 1


def test_dims_have_readable_names(onnx_models):
    def shapes(values):
        return {v.name: str(v.shape) for v in values}

    assert shapes(onnx_models.logits.graph.inputs) == {
        "input_ids": "[batch_size,sequence_length]", "attention_mask": "[batch_size,sequence_length]"}
    assert shapes(onnx_models.logits.graph.outputs) == {"logits": "[batch_size,sequence_length,512]"}
    dec_in, dec_out = shapes(onnx_models.decoder.graph.inputs), shapes(onnx_models.decoder.graph.outputs)
    assert dec_in["attention_mask"] == "[batch_size,past_sequence_length + sequence_length]"
    assert dec_in["position_ids"] == "[batch_size,sequence_length]"
    assert dec_in["past_key_values.1.value"] == "[batch_size,1,past_sequence_length,32]"
    assert dec_out["present.0.key"] == "[batch_size,1,past_sequence_length + sequence_length,32]"
    assert list(dec_out) == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]


def test_set_parameter_reaches_the_onnx_export(programs, tmp_path, ort_session):
    name = "model.layers.0.self_attn.v_proj.weight"
    old = programs.parameter(name)
    ids = torch.randint(3, 259, (1, 5), generator=torch.Generator().manual_seed(3))
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 5), np.int64)}
    programs.set_parameter(name, -old)
    try:
        model = to_onnx(dataclasses.replace(programs, decoder=None)).logits
        with torch.no_grad():
            edited = programs.logits.module()(ids, torch.ones_like(ids)).numpy()
    finally:
        programs.set_parameter(name, old)
    np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), -old.detach().numpy())
    ir.save(model, tmp_path / "edited.onnx")
    out = ort_session(tmp_path / "edited.onnx").run(None, feed)[0]
    np.testing.assert_allclose(out, edited, atol=1e-4, rtol=0)
    with torch.no_grad():
        original = programs.logits.module()(ids, torch.ones_like(ids)).numpy()
    assert np.abs(out - original).max() > 1e-2
