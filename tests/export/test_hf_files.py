"""config.json, generation_config.json and tokenizer_config.json of the deployed folder load in our
transformers (5.x) as the model had them; tests/test_optimum.py loads the same files in 4.x."""

import json

import pytest

from qpasses.compiler import model_configs
from qpasses.export.hf_files import (
    CONFIG_FILE,
    GENERATION_FILE,
    portable_config,
    portable_tokenizer_config,
    write_hf_files,
)
from qpasses.models.families import FAMILIES, build_family
from qpasses.models.tiny import build_byte_tokenizer

SAMPLE = "Hello world, <|im_start|>user\nhé ünïcode 123<|im_end|>\n"
SAME_ATTRIBUTES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "head_dim", "layer_types", "sliding_window", "tie_word_embeddings", "max_position_embeddings",
                   "rope_parameters", "eos_token_id")  # partial_rotary_factor: in rope_parameters in 5.x


def hf_folder(family, folder):
    """A folder as the deploy step leaves it: the tokenizer saved, then write_hf_files."""
    model, _ = build_family(family)
    build_byte_tokenizer().save_pretrained(folder)
    write_hf_files(folder, model_configs(model))
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_files_load_in_transformers_5_as_the_model_had_them(family, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    model = hf_folder(family, tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config) and config.architectures == [type(model).__name__]
    for name in SAME_ATTRIBUTES:
        assert getattr(config, name, None) == getattr(model.config, name, None), name
    assert config.use_cache is True
    generation = GenerationConfig.from_pretrained(tmp_path)
    assert (generation.eos_token_id, generation.pad_token_id) == (2, 2)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tokenizer.encode(SAMPLE, add_special_tokens=False) == raw.encode(SAMPLE, add_special_tokens=False).ids
    assert tokenizer.chat_template == (tmp_path / "chat_template.jinja").read_text()
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_start|>",
                                                                             "<|im_end|>")


def test_the_tokenizer_class_is_one_transformers_4_knows(tmp_path):
    hf_folder("llama", tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert portable_tokenizer_config({"tokenizer_class": "TokenizersBackend", "is_local": True,
                                      "local_files_only": True, "eos_token": "</s>"}) == {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>"}
    assert portable_tokenizer_config({"tokenizer_class": "GPT2Tokenizer"})["tokenizer_class"] == "GPT2Tokenizer"


def test_rope_parameters_get_their_transformers_4_spelling():
    llama3 = {"rope_type": "llama3", "factor": 32.0, "rope_theta": 500000.0, "low_freq_factor": 1.0}
    out = portable_config({"rope_parameters": llama3, "dtype": None, "_name_or_path": "/home/x"}, "LlamaForCausalLM")
    assert out["rope_theta"] == 500000.0 and out["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0,
                                                                     "low_freq_factor": 1.0}
    assert (out["dtype"], out["architectures"], out["use_cache"]) == ("float32", ["LlamaForCausalLM"], True)
    assert "_name_or_path" not in out and out["rope_parameters"] == llama3  # 5.x reads its own key unchanged
    gemma3 = {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    out = portable_config({"rope_parameters": gemma3})
    assert (out["rope_theta"], out["rope_local_base_freq"], out["rope_scaling"]) == (1e6, 1e4, None)
    partial = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}
    phi = portable_config({"rope_parameters": partial})
    assert (phi["partial_rotary_factor"], phi["rope_scaling"]) == (0.5, None)


def test_an_onnx_input_gets_no_model_config(tmp_path):
    build_byte_tokenizer().save_pretrained(tmp_path)
    assert write_hf_files(tmp_path, None) == [tmp_path / "tokenizer_config.json"]
    assert not (tmp_path / CONFIG_FILE).exists() and not (tmp_path / GENERATION_FILE).exists()
