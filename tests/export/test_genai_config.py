"""genai_config.json from a step graph (built in code: the builder reads names, shapes and who reads the
past, never runs the graph), the Hugging Face config and the generation config."""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest

from qpasses.domain import DOMAIN, MS_DOMAIN
from qpasses.errors import InputError
from qpasses.export.genai_config import genai_config, served_context, write_genai_config

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "bos_token_id": 1, "eos_token_id": 2,
         "pad_token_id": 2}
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "bos_token_id": 50256, "eos_token_id": 50256}


def step_graph(attention: str = "gqa", layers: int = 2, kv_heads: int = 2, head_dim: int = 16, vocab: int = 512,
               qpasses_ops: bool = True, ort: dict | None = None) -> ir.Model:
    """input_ids, attention_mask, position_ids, past_key_values.{i}.key/value -> logits, present.{i}.key/value.
    attention: "gqa" (GroupQueryAttention reads the past), "concat" (unfused: Concat(past, new)) or
    "shape" (GroupQueryAttention, plus a Shape of the past as the exported mask reads it)."""
    batch, seq, past_len = ir.SymbolicDim("batch_size"), ir.SymbolicDim("sequence_length"), ir.SymbolicDim("past")
    ids = ir.val("input_ids", ir.DataType.INT64, [batch, seq])
    mask = ir.val("attention_mask", ir.DataType.INT64, [batch, ir.SymbolicDim("total")])
    pos = ir.val("position_ids", ir.DataType.INT64, [batch, seq])
    inputs, outputs, nodes = [ids, mask, pos], [], []
    hidden = ir.node("Cast", [ids], attributes={"to": ir.DataType.FLOAT}, domain=DOMAIN if qpasses_ops else "")
    nodes.append(hidden)
    for i in range(layers):
        past = [ir.val(f"past_key_values.{i}.{kv}", ir.DataType.FLOAT, [batch, kv_heads, past_len, head_dim])
                for kv in ("key", "value")]
        inputs += past
        if attention == "concat":
            present = [ir.node("Concat", [p, hidden.outputs[0]], attributes={"axis": 2}) for p in past]
            nodes += present
            present = [n.outputs[0] for n in present]
        else:
            gqa = ir.node("GroupQueryAttention", [hidden.outputs[0], None, None, *past], domain=MS_DOMAIN,
                          attributes={"num_heads": 4, "kv_num_heads": kv_heads}, num_outputs=3)
            nodes.append(gqa)
            present = list(gqa.outputs[1:])
            if attention == "shape":
                nodes.append(ir.node("Shape", [past[0]], attributes={"start": 2, "end": 3}))
        for kv, value in zip(("key", "value"), present):
            value.name = f"present.{i}.{kv}"
        outputs += present
    logits = ir.node("Identity", [hidden.outputs[0]]).outputs[0]
    nodes.append(logits.producer())
    logits.name, logits.shape, logits.dtype = "logits", ir.Shape([batch, seq, vocab]), ir.DataType.FLOAT
    opsets = {"": 21, MS_DOMAIN: 1, **({DOMAIN: 1} if qpasses_ops else {})}
    graph = ir.Graph(inputs, [logits, *outputs], nodes=nodes, opset_imports=opsets)
    model = ir.Model(graph, ir_version=10)
    if ort is not None:
        model.metadata_props["qpasses.ort"] = json.dumps(ort)
    return model


def test_a_fused_llama_shares_the_kv_buffer_and_names_the_library():
    config = genai_config(step_graph("gqa"), LLAMA, None, 2048, "libqpasses_ops.so")
    model, search = config["model"], config["search"]
    assert model["type"] == "llama" and model["context_length"] == 2048 and model["vocab_size"] == 512
    assert (model["bos_token_id"], model["eos_token_id"], model["pad_token_id"]) == (1, [2], 2)
    decoder = model["decoder"]
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == (2, 2, 16)
    assert (decoder["num_attention_heads"], decoder["hidden_size"], decoder["filename"]) == (4, 64, "model.onnx")
    assert decoder["session_options"]["custom_ops_library"] == "libqpasses_ops.so"
    assert decoder["inputs"] == {"input_ids": "input_ids", "attention_mask": "attention_mask",
                                 "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                                 "past_value_names": "past_key_values.%d.value"}
    assert decoder["outputs"]["present_key_names"] == "present.%d.key"
    assert search["past_present_share_buffer"] is True and search["max_length"] == 2048
    assert search["do_sample"] is False and search["num_beams"] == 1


def test_an_unfused_gpt2_does_not_share_and_runs_as_genais_generic_decoder():
    """genai's own "gpt2" type wants one combined past tensor per layer; ours has a key and a value."""
    config = genai_config(step_graph("concat", qpasses_ops=False), GPT2, None, 1024, None)
    assert config["model"]["type"] == "decoder"
    assert config["search"]["past_present_share_buffer"] is False
    decoder = config["model"]["decoder"]
    assert (decoder["num_attention_heads"], decoder["hidden_size"]) == (4, 64)  # n_head, n_embd
    assert "custom_ops_library" not in decoder["session_options"]  # no qpasses op in the graph
    assert config["model"]["pad_token_id"] == 50256  # no pad id: the first eos pads


def test_a_graph_that_reads_the_past_shape_does_not_share():
    """With a shared buffer the past tensor is max_length long, so its shape no longer tells the past length."""
    assert genai_config(step_graph("shape"), LLAMA, None, 64, "lib.so")["search"]["past_present_share_buffer"] is False


@pytest.mark.parametrize("library", [None, "", "lib/libqpasses_ops.so", "/abs/libqpasses_ops.so", ".."])
def test_a_graph_with_our_ops_needs_the_library_file_name(library):
    with pytest.raises(InputError, match="file name of the op library"):
        genai_config(step_graph("gqa"), LLAMA, None, 64, library)


def test_the_compilers_session_settings_become_genai_session_options():
    ort = {"optimization": "extended", "config": {"session.qdq_matmulnbits_accuracy_level": "0"}}
    options = genai_config(step_graph(ort=ort), LLAMA, None, 64, "x.so")["model"]["decoder"]["session_options"]
    assert options["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert options["session.qdq_matmulnbits_accuracy_level"] == "0"
    default = genai_config(step_graph(ort={}), LLAMA, None, 64, "x.so")["model"]["decoder"]["session_options"]
    assert default["graph_optimization_level"] == "ORT_ENABLE_ALL"  # what qpasses' own sessions use
    with pytest.raises(InputError, match="unknown optimization level"):
        genai_config(step_graph(ort={"optimization": "max"}), LLAMA, None, 64, "x.so")


def test_search_defaults_and_eos_ids_come_from_the_generation_config():
    generation = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [2, 7], "max_length": 20}
    config = genai_config(step_graph(), LLAMA, generation, 4096, "x.so")
    search = config["search"]
    assert (search["do_sample"], search["temperature"], search["top_p"]) == (True, 0.6, 0.9)
    assert (search["top_k"], search["repetition_penalty"]) == (50, 1.0)  # Hugging Face's defaults
    assert search["max_length"] == 4096  # the context the folder serves, not generate()'s 20
    assert config["model"]["eos_token_id"] == [2, 7]


@pytest.mark.parametrize("model_type, expected", [("qwen3", "qwen3"), ("gemma3_text", "gemma3_text"),
                                                  ("phi3", "phi3"), ("falcon", "decoder"), ("opt", "decoder"),
                                                  (None, "decoder")])
def test_model_types(model_type, expected):
    hf = {**LLAMA, "model_type": model_type}
    assert genai_config(step_graph(), hf, None, 64, "x.so")["model"]["type"] == expected


def test_bad_input_is_one_clear_error():
    with pytest.raises(InputError, match="no eos_token_id"):
        genai_config(step_graph(), {"model_type": "llama"}, None, 64, "x.so")
    with pytest.raises(InputError, match="context_length"):
        genai_config(step_graph(), LLAMA, None, 0, "x.so")
    logits_only = step_graph(layers=0)
    with pytest.raises(InputError, match="not a KV-cache step graph"):
        genai_config(logits_only, LLAMA, None, 64, "x.so")


def test_write_genai_config(tmp_path):
    path = write_genai_config(tmp_path, step_graph(), LLAMA, None, 64, "libqpasses_ops.so")
    assert path == tmp_path / "genai_config.json"
    assert json.loads(path.read_text()) == genai_config(step_graph(), LLAMA, None, 64, "libqpasses_ops.so")


def test_served_context_is_the_rotary_rows_else_the_models_limit():
    assert served_context({"model": 2048, "rotary_rows": 512}, LLAMA) == 512
    assert served_context({}, {**GPT2, "n_positions": 1024}) == 1024
    with pytest.raises(InputError, match="how many positions"):
        served_context(None, LLAMA)
