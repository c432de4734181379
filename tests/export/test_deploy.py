import os
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx_builders import linear_model

from qpasses.errors import InputError, PostconditionError, QPassError
from qpasses.evaluate.perplexity import ort_logits_fn
from qpasses.export.deploy import DATA_FILE, MODEL_FILE, save_deployment
from qpasses.ir import cleanup
from qpasses.ir.cleanup import EXTERNAL_MIN_BYTES
from qpasses.models.tiny import build_byte_tokenizer


def external_refs(path) -> dict[str, tuple[str, int, int]]:
    """initializer name -> (location, offset, length) for every external initializer."""
    proto = onnx.load(path, load_external_data=False)
    refs = {}
    for t in proto.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if info:
            refs[t.name] = (info["location"], int(info["offset"]), int(info["length"]))
    return refs


def test_folder_holds_the_step_graph_its_data_file_and_the_tokenizer(deployed):
    names = {p.name for p in deployed.iterdir()}
    assert names == {MODEL_FILE, DATA_FILE, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert not [p for p in deployed.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    inputs = [v.name for v in ir.load(deployed / MODEL_FILE).graph.inputs]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"] and inputs[3] == "past_key_values.0.key"


def test_the_graph_points_at_its_data_file_each_tensor_once(deployed):
    refs = external_refs(deployed / MODEL_FILE)
    assert {loc for loc, _, _ in refs.values()} == {DATA_FILE}
    assert "model.embed_tokens.weight" in refs and "lm_head.weight" not in refs  # tied: one table
    spans = sorted((off, off + n) for _, off, n in refs.values())
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # each tensor written once
    assert (deployed / DATA_FILE).stat().st_size == spans[-1][1]


def test_the_graph_loads_with_metadata_and_external_weights(deployed):
    model = ir.load(deployed / MODEL_FILE)
    assert {"qpasses.recipe": "test", "qpasses.note": "tiny"}.items() <= model.metadata_props.items()
    table = model.graph.initializers["model.embed_tokens.weight"].const_value
    assert isinstance(table, ir.ExternalTensor) and table.shape == (512, 64)


FOLDERS = ["deployed", "fused_deployed"]  # as exported, and after the speed fusions (fuse_norms, fuse_attention)


@pytest.mark.parametrize("folder", FOLDERS)
def test_onnxruntime_logits_match_torch_with_a_left_padded_row(folder, request, programs, ort_session):
    """The step graph with an empty past (what perplexity runs) against the torch logits program."""
    deployed = request.getfixturevalue(folder)
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        expected = programs.logits.module()(ids, mask).numpy()
    out = ort_logits_fn(ort_session(deployed / MODEL_FILE))(ids, mask).numpy()
    # Rows of padding tokens attend to nothing: torch's sdpa returns 0 there, the exported
    # graph the mean of V (its mask uses finfo.min, not -inf). Nobody reads those logits.
    real = mask.numpy().astype(bool)
    np.testing.assert_allclose(out[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("folder", FOLDERS)
def test_greedy_decoding_with_the_kv_cache_matches_full_sequence_logits(folder, request, tiny, ort_session):
    deployed = request.getfixturevalue(folder)
    step = ort_session(deployed / MODEL_FILE)
    past_names = [i.name for i in step.get_inputs() if i.name.startswith("past_key_values.")]
    kv_shape = step.get_inputs()[3].shape  # [batch_size, kv_heads, past_sequence_length, head_dim]
    ids = torch.randint(3, 259, (2, 5), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    past = {n: np.zeros((2, kv_shape[1], 0, kv_shape[3]), np.float32) for n in past_names}
    new = ids
    for _ in range(9):  # prefill from an empty cache, then 8 one-token steps
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        feed = {"input_ids": new.numpy(), "attention_mask": mask.numpy(),
                "position_ids": positions[:, -new.shape[1]:].numpy(), **past}
        logits, *present = step.run(None, feed)
        with torch.no_grad():
            full = tiny(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].numpy()
        np.testing.assert_allclose(logits[:, -1], full, atol=1e-4, rtol=0)
        past = dict(zip(past_names, present))
        new = torch.from_numpy(logits[:, -1].argmax(-1))[:, None]
        ids, mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    assert past[past_names[0]].shape[2] == ids.shape[1] - 1


def test_finalize_shrinks_the_graph_and_keeps_every_weight(deployed, onnx_models):
    raw, done = onnx_models.decoder, ir.load(deployed / MODEL_FILE)
    large = {n for n, v in raw.graph.initializers.items() if v.const_value.nbytes >= EXTERNAL_MIN_BYTES}
    assert set(external_refs(deployed / MODEL_FILE)) == large
    assert len(done.graph) < 0.6 * len(raw.graph)
    assert Counter(n.op_type for n in done.graph)["MatMul"] == Counter(n.op_type for n in raw.graph)["MatMul"]
    assert not any("pkg.torch.onnx.stack_trace" in n.metadata_props for n in done.graph)


def test_a_non_empty_folder_is_refused_without_force(onnx_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--force") as err:
        save_deployment(onnx_models, out, build_byte_tokenizer(), {})
    assert isinstance(err.value, QPassError)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_force_replaces_the_folder_whole(onnx_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.onnx").write_text("old")
    files = save_deployment(onnx_models, out, build_byte_tokenizer(), {}, force=True)
    assert not (out / "stale.onnx").exists()
    assert {p.name for p in files} >= {MODEL_FILE, DATA_FILE}
    assert os.listdir(tmp_path) == ["out"]  # neither the temp folder nor the old one is left


def test_finalize_refuses_to_create_large_initializers(monkeypatch):
    """The guard against what finalize must never do: fold Transpose(W) into a renamed copy."""
    model, _ = linear_model(32, 16, layouts=("nk",))

    def fold_the_transpose(m):
        for t in [n for n in m.graph if n.op_type == "Transpose"]:
            w = t.inputs[0].const_value.numpy()
            copy = ir.Value(name="val_7", const_value=ir.tensor(np.ascontiguousarray(w.T)))
            m.graph.register_initializer(copy)
            t.outputs[0].replace_all_uses_with(copy)

    monkeypatch.setattr(cleanup, "_fold", fold_the_transpose)
    with pytest.raises(PostconditionError, match="val_7"):
        cleanup.finalize(model)
