"""A Llama-shaped model of about 1B parameters with seeded random weights, saved as a local
Hugging Face folder: the input of the scale benchmark (bench/scale.py).

Shape (issue 10): hidden 2048, 16 layers, 32 heads of 64, 8 KV heads, intermediate 8192, and
SmolLM2's tokenizer, vocabulary (49152), rotary and norm settings; the lm_head is tied to the
embedding as in SmolLM2. Linear weights are N(0, 0.02²), norm weights 1 + 0.1·N(0, 1), each
tensor from its own generator (seed, tensor index), so a shard never needs another one.

The folder holds one bf16 safetensors shard per decoder layer plus one for the embedding and the
final norm, with the `model.safetensors.index.json` transformers reads. It is built one shard at a
time (at most one layer's tensors in memory) and published atomically.

    python -m bench.llama_1b OUT [--layers N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, head_dim=64, num_key_value_heads=8,
             intermediate_size=8192, vocab_size=49152)
# Settings copied from SmolLM2-135M-Instruct's config (the tokenizer's ids, rotary base, norm eps).
SMOLLM2 = ("bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "rope_parameters", "max_position_embeddings",
           "hidden_act", "tie_word_embeddings")


def layer_shapes(i: int, s: dict) -> dict[str, tuple[int, ...]]:
    """State-dict name -> shape of decoder layer i."""
    h, kv, ff = s["hidden_size"], s["num_key_value_heads"] * s["head_dim"], s["intermediate_size"]
    q = s["num_attention_heads"] * s["head_dim"]
    p = f"model.layers.{i}."
    return {p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q), p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h), p + "mlp.down_proj.weight": (h, ff)}


def shards(s: dict) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """(file name, {tensor name: shape}) for every shard, in the order tensors are numbered."""
    n = s["num_hidden_layers"]
    head = {"model.embed_tokens.weight": (s["vocab_size"], s["hidden_size"]), "model.norm.weight": (s["hidden_size"],)}
    files = [f"model-{k + 1:05d}-of-{n + 1:05d}.safetensors" for k in range(n + 1)]
    return [(files[0], head)] + [(files[i + 1], layer_shapes(i, s)) for i in range(n)]


def random_tensor(name: str, shape: tuple[int, ...], seed: int, index: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    noise = torch.randn(shape, generator=gen)
    weight = 1 + 0.1 * noise if name.endswith("norm.weight") else 0.02 * noise
    return weight.to(torch.bfloat16)


def build(out: Path, layers: int | None = None, seed: int = 0) -> Path:
    """Write the folder at `out` (atomically); returns `out`. `layers` shortens the model."""
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import LlamaConfig

    from qpasses.cache import publish, staging_dir
    from qpasses.load import smollm2
    from qpasses.load.hf_folder import RANDOM_WEIGHTS

    if out.exists():
        raise FileExistsError(f"{out} exists; delete it or choose another folder")
    smol = smollm2.load()
    shape = {**SHAPE, **({"num_hidden_layers": layers} if layers else {})}
    config = LlamaConfig(**{k: getattr(smol.model.config, k) for k in SMOLLM2}, **shape,
                         architectures=["LlamaForCausalLM"], dtype="bfloat16")
    plan = shards(shape)
    with staging_dir(out) as tmp:
        built = tmp / out.name
        built.mkdir()
        config.save_pretrained(built)
        smol.tokenizer.save_pretrained(built)
        weight_map, total, index = {}, 0, 0
        for file, tensors in tqdm(plan, desc=f"writing {out.name}", unit="shard"):
            data = {}
            for name, dims in tensors.items():
                data[name] = random_tensor(name, dims, seed, index)
                index += 1
                weight_map[name] = file
                total += data[name].numel() * data[name].element_size()
            save_file(data, str(built / file), metadata={"format": "pt"})
        meta = {"metadata": {"total_size": total, "seed": seed,
                             RANDOM_WEIGHTS: f"seeded ({seed}) by models/llama_1b.py"},
                "weight_map": weight_map}
        (built / "model.safetensors.index.json").write_text(json.dumps(meta, indent=2))
        publish(built, out)
    return out


def parameter_count(shape: dict = SHAPE) -> int:
    """Parameters of the model (the tied lm_head counted once)."""
    return sum(int(torch.Size(d).numel()) for _, tensors in shards(shape) for d in tensors.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m bench.llama_1b")
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 16: the 1B shape)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    build(args.out, args.layers, args.seed)
    shape = {**SHAPE, **({"num_hidden_layers": args.layers} if args.layers else {})}
    print(f"wrote {args.out}: {parameter_count(shape) / 1e9:.3f}B parameters, bf16")


if __name__ == "__main__":
    main()
