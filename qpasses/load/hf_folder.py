"""A local Hugging Face folder: config.json, safetensors or pytorch_model*.bin weights, tokenizer.

Causal LMs (what the compiler targets) load through AutoModelForCausalLM; any other architecture
(a BERT-style encoder, say) through AutoModel, which is enough for weight-only recipes. Weights are
checked before and after transformers reads them: unreadable files, tensors the checkpoint lacks
(transformers would silently initialize them at random) and NaN/Inf values are all `InputError`s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qpasses.cache import sha256_file
from qpasses.errors import InputError
from qpasses.load.common import (
    LoadedModel,
    check_finite,
    combined_sha256,
    first_line,
    load_tokenizer,
    offline,
    versions,
)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
RANDOM_WEIGHTS = "random_weights"  # index metadata of a test model whose weights are random (bench/llama_1b.py)


def load(folder: Path, tokenizer: Path | None = None, name: str | None = None,
         source: dict | None = None) -> LoadedModel:
    """Load the model in `folder` in fp32 (its weights in mapped files: `as_mapped_float32`), eval mode.

    A cache folder qpasses wrote itself passes its own `source` (provenance); then the files are
    not hashed and the weights, checked when the cache was built, are not scanned again."""
    offline()
    config = read_config(folder)
    weights = [p for pattern in WEIGHT_PATTERNS for p in sorted(folder.glob(pattern))]
    if not weights:
        raise InputError(f"{folder} has config.json but no weights ({' or '.join(WEIGHT_PATTERNS)}); "
                         f"save the model with save_pretrained")
    for path in weights:
        if path.suffix == ".safetensors":
            check_safetensors(path)
    model = _from_pretrained(folder, config)
    tok = load_tokenizer(tokenizer if tokenizer is not None else folder)
    if source is None:
        check_finite(model.state_dict().items(), str(folder))
        files = {p.name: sha256_file(p) for p in weights}
        source = {"type": "hf-folder", "path": str(folder.resolve()), "files": files, "sha256": combined_sha256(files)}
    source = {**source, "class": type(model).__name__, "versions": versions()}
    if random := index_metadata(folder).get(RANDOM_WEIGHTS):
        source[RANDOM_WEIGHTS] = random
    if tokenizer is not None:
        source["tokenizer"] = str(tokenizer.resolve())
    return LoadedModel(name=name or folder.resolve().name, kind="torch", model=model, onnx_path=None,
                       tokenizer=tok, source=source)


def read_config(folder: Path):
    """The folder's transformers config; `InputError` if it is missing or unreadable."""
    path = folder / "config.json"
    if not path.is_file():
        hint = ""
        onnx_files = sorted(folder.glob("*.onnx"))
        if onnx_files:
            hint = f"; it holds {onnx_files[0].name}: pass that file instead"
        raise InputError(f"{folder} has no config.json, so it is not a Hugging Face model folder{hint}")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({first_line(e)}); restore it from the original model") from e
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001  (config classes raise ValueError, KeyError, TypeError...)
        raise InputError(f"cannot read {path}: {first_line(e)}") from e


def index_metadata(folder: Path) -> dict:
    """The "metadata" of the folder's model.safetensors.index.json ({} without a readable one)."""
    try:
        meta = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8")).get("metadata")
    except (OSError, ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def check_safetensors(path: Path) -> None:
    """Parse a safetensors header; it fails on corrupt files, and on truncated ones names the
    first tensor whose bytes are missing."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001  (SafetensorError, OSError)
        cut = _first_truncated_tensor(path)
        what = f"it is truncated (tensor {cut} is cut off)" if cut else "it is corrupt or truncated"
        raise InputError(f"{path} is not a readable safetensors file ({first_line(e)}): {what}; "
                         f"copy or save it again") from e


def _first_truncated_tensor(path: Path) -> str | None:
    """The tensor of a safetensors file whose data ends first beyond the end of the file, when
    the header (8-byte length, then JSON) is readable; else None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length)) if length < size else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    available = size - 8 - length
    ends = {name: t["data_offsets"][1] for name, t in header.items()
            if isinstance(t, dict) and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2}
    cut = sorted((end, name) for name, end in ends.items() if end > available)
    return cut[0][1] if cut else None


def is_causal_lm(config) -> bool:
    """True when the checkpoint is a causal LM: its `architectures` name one, or, without
    `architectures`, its model type has a `...ForCausalLM` class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES

    causal = {n for v in NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    if config.architectures:
        return any(a in causal for a in config.architectures)
    mapped = NAMES.get(config.model_type, "")
    return isinstance(mapped, str) and mapped.endswith("ForCausalLM")


def _from_pretrained(folder: Path, config):
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if is_causal_lm(config) else AutoModel
    try:
        model, info = cls.from_pretrained(str(folder), config=config, dtype="auto", local_files_only=True,
                                          output_loading_info=True)
    except Exception as e:  # noqa: BLE001  (transformers and torch raise many types here)
        raise InputError(f"cannot load the weights in {folder}: {first_line(e)}") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise InputError(f"{folder}: the checkpoint lacks {len(missing)} weight(s) the {type(model).__name__} "
                         f"needs (first: {missing[0]}); the files are incomplete or of another model")
    return as_mapped_float32(model).eval()


def as_mapped_float32(model: torch.nn.Module) -> torch.nn.Module:
    """The model in float32, its floating parameters converted one at a time into mapped files
    (qpasses.offload): loading holds the checkpoint's own dtype (bf16: half of float32) plus one
    float32 tensor, and the float32 weights are resident only while read. The values are those of
    a float32 load (the conversion is exact); tied parameters stay one tensor."""
    from qpasses.offload import to_file

    converted = {}  # id(old) -> (old, new); holding old keeps the ids unique
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not p.is_floating_point():
                continue
            if id(p) not in converted:
                converted[id(p)] = (p, torch.nn.Parameter(to_file(p.detach().float()), requires_grad=p.requires_grad))
            module._parameters[name] = converted[id(p)][1]
    model.float()  # buffers (a float32 tensor is left as it is)
    model.config.dtype = torch.float32
    return model
