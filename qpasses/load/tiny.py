"""The tiny seeded Llamas of `qpasses.models.tiny`, built in code, with the byte tokenizer."""

from __future__ import annotations

from pathlib import Path

from qpasses.load.common import LoadedModel, load_tokenizer, state_sha256, versions
from qpasses.models.tiny import TINY_CONFIGS, build_byte_tokenizer, build_tiny_llama

NAMES = tuple(sorted(TINY_CONFIGS))
SEED = 0


def load(name: str, tokenizer: Path | None = None) -> LoadedModel:
    """Build `name` (one of `NAMES`); a tokenizer folder, if given, replaces the byte tokenizer."""
    model = build_tiny_llama(name, seed=SEED)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else build_byte_tokenizer()
    source = {
        "type": "builtin",
        "builder": "qpasses.models.tiny.build_tiny_llama",
        "seed": SEED,
        "sha256": state_sha256(model),
        "tokenizer": str(tokenizer.resolve()) if tokenizer is not None else "qpasses.models.tiny.build_byte_tokenizer",
        "versions": versions(),
    }
    return LoadedModel(name=name, kind="torch", model=model, onnx_path=None, tokenizer=tok, source=source)
