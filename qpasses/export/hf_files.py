"""The Hugging Face files of the deployed folder: config.json and generation_config.json, and a
tokenizer_config.json that both transformers 4.x and 5.x load, so Hugging Face runners (optimum's
ORTModelForCausalLM, which pins transformers < 4.58) open the folder as is.

transformers 5 names some config keys differently from 4.x; the files keep 5.x's keys and add
the 4.x spelling beside them (each version ignores the other's extra keys):
- `rope_parameters` (5.x; rope_theta inside, one dict per layer type for Gemma 3) -> `rope_theta`,
  `rope_scaling` (None for the default rotary), `partial_rotary_factor`, and for a per-layer-type
  dict the full-attention layers' values plus `rope_local_base_freq` (the sliding layers' theta);
- `dtype`: float32, what the ONNX graph's inputs and outputs are (4.56+ read `dtype`; an added
  `torch_dtype` would only make them warn, and no ONNX runner reads it);
- `architectures`: the model's class when the config leaves it empty; `use_cache`: true.
The tokenizer: 5.x writes `"tokenizer_class": "TokenizersBackend"`, a class 4.x does not have;
`PreTrainedTokenizerFast` is that same class in 5.x (an alias) and the tokenizer.json-backed class
in 4.x. Load arguments that leaked into the file (`is_local`, `local_files_only`) are dropped.

The configs come in as dicts (`to_dict()` of the transformers objects): nothing here imports transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"
GENERATION_FILE = "generation_config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_LOAD_ARGUMENTS = ("is_local", "local_files_only")  # from_pretrained arguments, not tokenizer settings
_DROP = ("_name_or_path", "_commit_hash", "_attn_implementation_autoset", "transformers_version")


def write_hf_files(folder: Path, configs: dict | None = None) -> list[Path]:
    """Write config.json and generation_config.json from `configs` (the compiler's
    `model_configs(model)`: {"config": dict, "generation": dict or None, "architecture": class
    name}; None for an ONNX input, which has no config: nothing written) and make
    tokenizer_config.json loadable by transformers 4.x and 5.x (when the folder has one).
    Returns the files written or changed."""
    folder = Path(folder)
    written = []
    if configs:
        config = configs["config"]
        written.append(_dump(folder / CONFIG_FILE, portable_config(config, configs.get("architecture"))))
        generation = configs.get("generation") or {}
        written.append(_dump(folder / GENERATION_FILE, portable_generation_config(generation, config)))
    tokenizer = folder / TOKENIZER_CONFIG_FILE
    if tokenizer.is_file():
        written.append(_dump(tokenizer, portable_tokenizer_config(json.loads(tokenizer.read_text()))))
    return written


def portable_config(config: dict, architecture: str | None = None) -> dict:
    """A transformers 5.x config dict with the 4.x spellings added (see the module docstring)."""
    out = {k: v for k, v in config.items() if k not in _DROP}
    if not out.get("architectures") and architecture:
        out["architectures"] = [architecture]
    out["dtype"] = "float32"
    out["use_cache"] = True
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        per_type = all(isinstance(v, dict) for v in rope.values())
        main = rope.get("full_attention", next(iter(rope.values()))) if per_type else rope
        out.setdefault("rope_theta", main.get("rope_theta"))
        if main.get("partial_rotary_factor") is not None:
            out.setdefault("partial_rotary_factor", main["partial_rotary_factor"])
        scaling = {k: v for k, v in main.items() if k not in ("rope_theta", "partial_rotary_factor")}
        out.setdefault("rope_scaling", scaling if scaling.get("rope_type", "default") != "default" else None)
        if per_type and "sliding_attention" in rope:
            out.setdefault("rope_local_base_freq", rope["sliding_attention"].get("rope_theta"))
    return out


def portable_generation_config(generation: dict, config: dict) -> dict:
    """The generation defaults, with the special token ids from the model config when the
    generation config leaves them out; `use_cache` true (the folder's graph is the KV-cache step)."""
    out = {k: v for k, v in generation.items() if k not in _DROP and v is not None}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if out.get(key) is None and config.get(key) is not None:
            out[key] = config[key]
    out["use_cache"] = True
    return out


def portable_tokenizer_config(tokenizer_config: dict) -> dict:
    """tokenizer_config.json with a class both transformers 4.x and 5.x know (see the module docstring)."""
    out = {k: v for k, v in tokenizer_config.items() if k not in _LOAD_ARGUMENTS}
    if out.get("tokenizer_class") in (None, "TokenizersBackend"):
        out["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    return out


def _dump(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
