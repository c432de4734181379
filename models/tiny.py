"""Tiny seeded random models for tests, built in code (no weights on disk).

`tiny-llama`: hidden 64, 2 heads of 32, 1 KV head, 2 layers (head size 32 keeps MX blocks inside
a head). `tiny-llama-96`: hidden 96, 3 heads of 32, 1 KV head: a non-power-of-two width for the
Hadamard passes. Both tie lm_head to the embedding like SmolLM2, and come with a byte-level
tokenizer built in code (256 byte tokens + 3 specials), so the text pipeline is the real one.
"""

from __future__ import annotations

import torch

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB = 512  # 3 specials + 256 bytes, rounded up; ids above 258 are never produced by the tokenizer
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_CONFIGS = {
    "tiny-llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=2),
    "tiny-llama-96": dict(hidden_size=96, intermediate_size=192, num_attention_heads=3),
}


def build_tiny_llama(name: str = "tiny-llama", seed: int = 0):
    """A random `LlamaForCausalLM` in eval mode, fp32, deterministic for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if name not in TINY_CONFIGS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(TINY_CONFIGS)}")
    cfg = LlamaConfig(
        vocab_size=VOCAB, num_hidden_layers=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=2048, rope_theta=1e5, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_CONFIGS[name],
    )
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights: around 1, not all equal, so folding them is testable
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token (ids 3..258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=SPECIALS[1], eos_token=SPECIALS[2], unk_token=SPECIALS[0],
        pad_token=SPECIALS[2],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_bert(folder, seed: int = 0):
    """A tiny BERT-style encoder (not a causal LM: hidden 64, one layer) with the byte tokenizer,
    saved as a Hugging Face folder; returns the folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(str(folder))
    build_byte_tokenizer().save_pretrained(str(folder))
    return folder
