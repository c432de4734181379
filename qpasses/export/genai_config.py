"""genai_config.json: what onnxruntime-genai needs to run a deployed folder as is.

onnxruntime-genai (the ORT team's generation loop) reads one JSON file beside the graph: the
model's type, token ids and context, the step graph's I/O names and KV shapes, the session
options, and the search defaults. Everything about the graph comes from the graph itself (the
KV-cache step graph: input_ids, attention_mask, position_ids, past_key_values.{i}.key/value ->
logits, present.{i}.key/value); token ids and sizes the graph cannot tell come from the model's
Hugging Face config; search defaults from its generation config.

Choices, verified with onnxruntime-genai 0.18:
- `model.type`: genai picks its generation loop by type. The families it names and runs with a
  plain decoder loop keep their Hugging Face name; every other family gets "decoder", genai's
  generic decoder-only type (the same loop). GPT-2 gets "decoder" too: genai's "gpt2" type
  expects one combined `past_{i}` tensor per layer, not our key/value pair.
- `past_present_share_buffer` (genai's fast path: past and present in one preallocated buffer of
  `max_length` positions): true only when every past_key_values input is read by
  com.microsoft GroupQueryAttention alone. An unfused attention concatenates the past (and a
  graph that reads a past tensor's shape would see the buffer's length, not the past's). The
  buffer holds `search.max_length` positions (the served context unless the caller passes a
  smaller max_length to set_search_options): SmolLM2's 8192 are 377 MB of fp32 KV.
- `custom_ops_library` is the library's file name, relative: genai resolves it in the model
  folder and refuses a path outside it.
- The compiler's session settings (`qpasses.ort` metadata) map to genai's session_options:
  the optimization level as `graph_optimization_level`, each config entry under its own key
  (genai passes keys it does not know to `AddConfigEntry`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import onnx_ir as ir

from qpasses.domain import DOMAIN, MS_DOMAIN
from qpasses.errors import InputError
from qpasses.runtime.ort import DEFAULT_OPTIMIZATION, METADATA_KEY, parse_settings

FILE = "genai_config.json"
# Hugging Face model_type -> genai model.type, for the families genai runs with its plain decoder loop
GENAI_TYPES = {t: t for t in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text")}
GENERIC_TYPE = "decoder"
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
# Hugging Face's defaults for the fields genai's search reads
SEARCH_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
KV = ("key", "value")


def genai_config(model: ir.Model, hf_config: Mapping, generation_config: Mapping | None, context_length: int,
                 library: str | None, filename: str = "model.onnx") -> dict:
    """The genai_config.json contents for the KV-cache step graph `model`, saved as `filename`.

    hf_config: the model's config.json contents; generation_config: its generation_config.json
    contents (None: Hugging Face's defaults); context_length: the positions the folder serves
    (genai's context_length and default max_length); library: the file name of our op library
    in the folder, required when the graph imports the qpasses domain."""
    g = model.graph
    inputs, outputs = {v.name: v for v in g.inputs}, {v.name for v in g.outputs}
    layers, kv_heads, head_size = _kv_shape(inputs)
    if "logits" not in outputs or any(f"present.{i}.{kv}" not in outputs for i in range(layers) for kv in KV):
        raise InputError("the step graph must output logits and present.{i}.key/value for every layer; "
                         f"it outputs {sorted(outputs)}")
    missing = {"input_ids", "attention_mask"} - set(inputs)
    if missing:
        raise InputError(f"the step graph has no {sorted(missing)} input; genai feeds input_ids and attention_mask")
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
        raise InputError(f"context_length must be a positive number of positions, got {context_length!r}")
    heads = _attention_heads(g) or _first(hf_config, "num_attention_heads", "n_head")
    if heads is None:
        raise InputError("neither the graph (GroupQueryAttention) nor the config (num_attention_heads) gives the "
                         "number of attention heads")
    ids = _token_ids(hf_config, generation_config or {})
    names = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if "position_ids" in inputs:
        names["position_ids"] = "position_ids"
    decoder = {
        "filename": filename,
        "session_options": _session_options(model, library),
        "head_size": head_size,
        "hidden_size": _first(hf_config, "hidden_size", "n_embd") or heads * head_size,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "inputs": {**names, "past_key_names": "past_key_values.%d.key",
                   "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    return {
        "model": {"type": genai_type(hf_config.get("model_type")), **ids, "context_length": context_length,
                  "vocab_size": _vocab(g), "decoder": decoder},
        "search": {**_search(generation_config or {}), "max_length": context_length, "min_length": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": shares_buffer(model)},
    }


def write_genai_config(folder: Path, model: ir.Model, hf_config: Mapping, generation_config: Mapping | None,
                       context_length: int, library: str | None, filename: str = "model.onnx") -> Path:
    """Write `genai_config(...)` as folder/genai_config.json; return its path."""
    path = Path(folder) / FILE
    config = genai_config(model, hf_config, generation_config, context_length, library, filename)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def served_context(max_context: Mapping | None, hf_config: Mapping) -> int:
    """The positions the folder serves: the rotary tables' rows fuse_attention recorded (the manifest's
    `max_context`), else the model's own limit (max_position_embeddings, GPT-2's n_positions)."""
    context = max_context or {}
    served = context.get("rotary_rows") or context.get("model") or _first(hf_config, "max_position_embeddings",
                                                                            "n_positions")
    if not isinstance(served, int) or served < 1:
        raise InputError("neither the decoder's rotary tables nor the model's config (max_position_embeddings) "
                         "say how many positions the folder serves")
    return served


def genai_type(model_type: str | None) -> str:
    """genai's model.type for a Hugging Face model_type (see the module docstring)."""
    return GENAI_TYPES.get(model_type or "", GENERIC_TYPE)


def shares_buffer(model: ir.Model) -> bool:
    """True when every past_key_values input is read by com.microsoft GroupQueryAttention only."""
    past = [v for v in model.graph.inputs if PAST.fullmatch(v.name)]
    return bool(past) and all(
        u.node.op_type == "GroupQueryAttention" and u.node.domain == MS_DOMAIN for v in past for u in v.uses())



def _kv_shape(inputs: Mapping[str, ir.Value]) -> tuple[int, int, int]:
    """(layers, kv heads, head size) of the past_key_values inputs, which must be numbered from 0."""
    past = {v.name: v for v in inputs.values() if PAST.fullmatch(v.name)}
    if not past:
        raise InputError("this graph is not a KV-cache step graph: it has no past_key_values.{i}.key/value inputs")
    layers = len(past) // 2
    expected = {f"past_key_values.{i}.{kv}" for i in range(layers) for kv in KV}
    if set(past) != expected:
        raise InputError(f"past_key_values inputs must be numbered 0..{layers - 1} with a key and a value each; "
                         f"got {sorted(past)}")
    shapes = {tuple(d if isinstance(d, int) else None for d in v.shape or ()) for v in past.values()}
    if len(shapes) != 1 or len(shape := shapes.pop()) != 4 or None in shape[1::2]:
        raise InputError("every past_key_values input must be [batch, kv_heads, past, head_dim] with the same "
                         f"fixed kv_heads and head_dim; got {sorted(str(v.shape) for v in past.values())}")
    return layers, shape[1], shape[3]


def _vocab(graph: ir.Graph) -> int:
    logits = next(v for v in graph.outputs if v.name == "logits")
    size = logits.shape[-1] if logits.shape is not None and len(logits.shape) == 3 else None
    if not isinstance(size, int):
        raise InputError(f"the logits output must be [batch, seq, vocab] with a fixed vocab; got {logits.shape}")
    return size


def _attention_heads(graph: ir.Graph) -> int | None:
    for node in graph:
        if node.op_type == "GroupQueryAttention" and node.domain == MS_DOMAIN:
            return node.attributes["num_heads"].as_int()
    return None


def _first(config: Mapping, *keys: str):
    return next((config[k] for k in keys if config.get(k) is not None), None)


def _token_ids(hf_config: Mapping, generation_config: Mapping) -> dict:
    """bos / eos / pad ids: the generation config's first (it is what generate() uses), then config.json's.
    Without a pad id, the first eos id pads (genai only pads batches)."""
    def pick(key):
        return _first(generation_config, key) if _first(generation_config, key) is not None else hf_config.get(key)

    eos = pick("eos_token_id")
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if not eos:
        raise InputError("the model's config names no eos_token_id; genai needs one to stop generating")
    out = {"eos_token_id": eos, "pad_token_id": pick("pad_token_id") if pick("pad_token_id") is not None else eos[0]}
    if pick("bos_token_id") is not None:
        out["bos_token_id"] = pick("bos_token_id")
    return out


def _search(generation_config: Mapping) -> dict:
    return {k: generation_config[k] if generation_config.get(k) is not None else v for k, v in SEARCH_DEFAULTS.items()}


def _session_options(model: ir.Model, library: str | None) -> dict:
    """log_id, the library (when the graph imports our domain) and the compiler's `qpasses.ort` settings."""
    options: dict = {"log_id": "qpasses"}
    if DOMAIN in model.opset_imports:
        if not library or Path(library).name != library or library in {".", ".."}:
            raise InputError(f"the graph uses the {DOMAIN} domain: pass the file name of the op library in the "
                             f"folder (genai loads it relative to the folder), got {library!r}")
        options["custom_ops_library"] = library
    ort = parse_settings(model.metadata_props.get(METADATA_KEY), f"metadata {METADATA_KEY}")
    level = ort.get("optimization") or DEFAULT_OPTIMIZATION
    options["graph_optimization_level"] = OPT_LEVELS[level]
    options.update(ort.get("config", {}))
    options["provider_options"] = []
    return options
