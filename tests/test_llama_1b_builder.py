"""bench/llama_1b.py: its shard plan names every tensor a LlamaForCausalLM of that shape has,
with the same shapes (checked on a small shape: the 1B one is only planned, never built here)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench import llama_1b

SMALL = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, head_dim=16, num_key_value_heads=2,
             intermediate_size=96, vocab_size=300)


def test_the_shards_hold_exactly_the_models_tensors():
    model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    planned = {k: v for _, tensors in llama_1b.shards(SMALL) for k, v in tensors.items()}
    assert planned == want
    assert len(llama_1b.shards(SMALL)) == SMALL["num_hidden_layers"] + 1


def test_the_1b_shape_has_about_a_billion_parameters():
    assert 1.0e9 < llama_1b.parameter_count() < 1.1e9


def test_random_tensors_are_seeded_per_tensor():
    a = llama_1b.random_tensor("model.layers.0.mlp.up_proj.weight", (8, 4), seed=0, index=5)
    assert torch.equal(a, llama_1b.random_tensor("model.layers.0.mlp.up_proj.weight", (8, 4), seed=0, index=5))
    assert not torch.equal(a, llama_1b.random_tensor("model.layers.0.mlp.up_proj.weight", (8, 4), seed=0, index=6))
    norm = llama_1b.random_tensor("model.norm.weight", (1000,), seed=0, index=1).float()
    assert abs(norm.mean().item() - 1) < 0.02 and a.dtype == torch.bfloat16
