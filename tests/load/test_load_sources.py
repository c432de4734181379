"""`load_model` on the built-in tiny models and on local Hugging Face folders, good and damaged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qpasses.errors import InputError
from qpasses.load import KNOWN_NAMES, LoadedModel, load_model


def folder_digest(folder: Path) -> str:
    """sha256 over every file name and content under `folder`."""
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-96"])
def test_tiny_names(name):
    loaded = load_model(name)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.name, loaded.kind, loaded.onnx_path) == (name, "torch", None)
    assert not loaded.model.training and loaded.model.dtype == torch.float32
    assert loaded.tokenizer.decode(loaded.tokenizer("ab", add_special_tokens=False).input_ids) == "ab"
    assert loaded.source["type"] == "builtin" and len(loaded.source["sha256"]) == 64
    assert load_model(name).source["sha256"] == loaded.source["sha256"]  # deterministic weights
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hf_folder_round_trip(tiny_folder):
    before = folder_digest(tiny_folder)
    loaded = load_model(str(tiny_folder))
    reference = load_model("tiny-llama").model
    assert (loaded.name, loaded.kind) == ("tiny-hf", "torch")
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not loaded.model.training
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.tokenizer.chat_template
    src = loaded.source
    assert src["type"] == "hf-folder" and src["path"] == str(tiny_folder.resolve())
    assert set(src["files"]) == {"model.safetensors"} and len(src["sha256"]) == 64
    assert folder_digest(tiny_folder) == before  # inputs are only read


def test_a_bf16_folder_loads_to_float32_values_in_mapped_files(tiny_folder):
    from qpasses.offload import mapped_bytes

    model = load_model("tiny-llama").model.to(torch.bfloat16)
    model.save_pretrained(str(tiny_folder))  # the folder now holds bf16 weights (config dtype bfloat16)
    before = mapped_bytes()
    loaded = load_model(str(tiny_folder)).model
    assert loaded.dtype == torch.float32 and loaded.config.dtype == torch.float32
    params = dict(loaded.named_parameters())
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(params[name], p.float()), name
    assert mapped_bytes() - before == sum(p.numel() * 4 for p in params.values())  # every weight mapped once
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # still tied


def test_bert_encoder_folder_loads_with_automodel(bert_folder):
    loaded = load_model(str(bert_folder))
    assert type(loaded.model).__name__ == "BertModel" and loaded.kind == "torch"
    assert loaded.source["class"] == "BertModel"
    out = loaded.model(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state
    assert out.shape == (1, 3, 64)


def test_tokenizer_override(tiny_folder, tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tok_dir / f).write_bytes((tiny_folder / f).read_bytes())
        (tiny_folder / f).unlink()
    with pytest.raises(InputError, match="pass --tokenizer DIR"):
        load_model(str(tiny_folder))
    loaded = load_model(str(tiny_folder), tokenizer=str(tok_dir))
    assert loaded.source["tokenizer"] == str(tok_dir.resolve())
    with pytest.raises(InputError, match="tokenizer folder .* does not exist"):
        load_model("tiny-llama", tokenizer=str(tmp_path / "nope"))


def test_unknown_name_lists_known_ones():
    with pytest.raises(InputError) as e:
        load_model("smollm3")
    assert "unknown model 'smollm3'" in str(e.value)
    assert all(name in str(e.value) for name in KNOWN_NAMES)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(str(tmp_path / "nowhere" / "model"))


def test_other_file_kinds_are_refused(tiny_folder):
    with pytest.raises(InputError, match="pass its folder"):
        load_model(str(tiny_folder / "model.safetensors"))


def test_folder_without_config(tiny_folder, make_onnx):
    (tiny_folder / "config.json").unlink()
    with pytest.raises(InputError, match="has no config.json"):
        load_model(str(tiny_folder))
    make_onnx(tiny_folder, tokenizer=False)
    with pytest.raises(InputError, match="holds model.onnx: pass that file instead"):
        load_model(str(tiny_folder))


def test_bad_config_json(tiny_folder):
    (tiny_folder / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json is not valid JSON"):
        load_model(str(tiny_folder))
    (tiny_folder / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(InputError, match="cannot read"):
        load_model(str(tiny_folder))


def test_folder_without_weights(tiny_folder):
    (tiny_folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        load_model(str(tiny_folder))


@pytest.mark.parametrize("damage, says", [("truncated", r"truncated \(tensor \S+ is cut off\)"),
                                          ("garbage", "corrupt or truncated")])
def test_corrupt_safetensors(tiny_folder, damage, says):
    path = tiny_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07" * 64)
    with pytest.raises(InputError, match=f"model.safetensors is not a readable safetensors file.*{says}"):
        load_model(str(tiny_folder))


def test_truncated_safetensors_names_the_tensor_cut_off(tiny_folder):
    path = tiny_folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-4])  # the tensor stored last loses its final bytes
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    last = max((t["data_offsets"][1], n) for n, t in header.items() if n != "__metadata__")[1]
    with pytest.raises(InputError,
                       match=rf"model.safetensors is not a readable safetensors file.*tensor {last} is cut off"):
        load_model(str(tiny_folder))


def test_checkpoint_missing_a_weight(tiny_folder):
    path = tiny_folder / "model.safetensors"
    state = load_file(str(path))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(InputError, match="lacks 1 weight.*model.layers.1.mlp.down_proj.weight"):
        load_model(str(tiny_folder))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_is_named(tiny_folder, value):
    path = tiny_folder / "model.safetensors"
    state = load_file(str(path))
    state["model.layers.0.self_attn.q_proj.weight"][3, 5] = value
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"weight model.layers.0.self_attn.q_proj.weight holds 1 NaN/Inf"):
        load_model(str(tiny_folder))


def test_error_messages_are_one_line(tiny_folder):
    (tiny_folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError) as e:
        load_model(str(tiny_folder))
    assert "\n" not in str(e.value)


def test_a_random_weights_model_is_marked_in_source_and_report(tiny_folder):
    from qpasses.load.hf_folder import RANDOM_WEIGHTS
    from qpasses.report import render_markdown

    names = list(load_file(str(tiny_folder / "model.safetensors")))
    index = {"metadata": {RANDOM_WEIGHTS: "seeded (0) by a test"},
             "weight_map": dict.fromkeys(names, "model.safetensors")}
    (tiny_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_model(str(tiny_folder))
    assert loaded.source[RANDOM_WEIGHTS] == "seeded (0) by a test"
    report = {"model": loaded.name, "recipe": "r", "recipe_description": "d", RANDOM_WEIGHTS: "seeded (0) by a test",
              "ppl_fp": None, "ppl_stage_a": 5.0, "ppl_quant": 5.0, "ort": "-", "eval_tokens": 10, "eval_windows": 2,
              "onnx_bytes": 1, "fp32_onnx_bytes": 8, "bits_per_weight": 4.0, "quantize_seconds": 1.0,
              "total_seconds": 2.0, "peak_rss_bytes": 2**30, "passes": [], "versions": {}}
    assert "weights are random (seeded (0) by a test): its perplexities mean nothing" in render_markdown(report)
    del report[RANDOM_WEIGHTS]
    assert "random" not in render_markdown(report)
