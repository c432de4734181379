"""One tiny seeded config per decoder family, built in code (no weights on disk).

Each family is a random model of its Hugging Face class: hidden 64, 2 layers, 4 heads, 2 KV heads
where the family has them, vocabulary 512 with the byte tokenizer of `qpasses.models.tiny`. Used by the
family tests (tests/test_families.py) and the family table (bench/families.py).
"""

from __future__ import annotations

from pathlib import Path

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048, vocab_size=512)
# family -> (config class, model class, config fields beyond SHAPE); names as transformers spells them
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),  # tied, as SmolLM2
    "llama-untied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral-sliding": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 64}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 64}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",  # one sliding and one global layer (default: 5 to 1)
               {"head_dim": 16, "sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 2048}),
    "falcon": ("FalconConfig", "FalconForCausalLM", {"new_decoder_architecture": False, "multi_query": True}),
    "opt": ("OPTConfig", "OPTForCausalLM", {"ffn_dim": 128, "word_embed_proj_dim": 64}),
}


def build_family(family: str, seed: int = 0, **config):
    """The family's tiny model (eval mode, fp32, deterministic for a seed) and its linear-layer count
    (`nn.Linear` and GPT-2's `Conv1D`). `config` overrides fields of the family's config (e.g.
    sliding_window=8); the weights depend on the seed and the shapes only."""
    import torch
    import transformers
    from transformers.pytorch_utils import Conv1D

    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    cfg_name, model_name, extra = FAMILIES[family]
    fields = {**SHAPE, **extra, **config}
    cfg = getattr(transformers, cfg_name)(**fields, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg).eval()
    return model, sum(isinstance(m, (torch.nn.Linear, Conv1D)) for m in model.modules())


def save_family(family: str, folder: Path, seed: int = 0) -> int:
    """Save the family's tiny model and the byte tokenizer in `folder` (once); returns its linear count."""
    from qpasses.models.tiny import build_byte_tokenizer

    model, linears = build_family(family, seed)
    folder = Path(folder)
    if not (folder / "config.json").exists():
        model.save_pretrained(str(folder))
        build_byte_tokenizer().save_pretrained(str(folder))
    return linears
