"""What every model source shares: the `LoadedModel` record, tokenizer loading, the finiteness
check on weights, content digests and the version stamp for provenance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qpasses.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Any one of these marks a folder as holding a tokenizer AutoTokenizer can read.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


@dataclass
class LoadedModel:
    """A model ready for the compiler, with its tokenizer and where it came from."""

    name: str  # "smollm2-135m", "tiny-llama", or the folder or file stem
    kind: str  # "torch" or "onnx"
    model: PreTrainedModel | None  # fp32, eval mode, for kind == "torch"
    onnx_path: Path | None  # for kind == "onnx"
    tokenizer: PreTrainedTokenizerBase
    source: dict = field(default_factory=dict)  # provenance: paths, sha256s ("sha256" = content digest), versions
    parameters: int | None = None  # set when `model` is dropped after capture (the report still counts them)


def offline() -> None:
    """Forbid hub access: nothing is downloaded through Hugging Face, here or in transformers."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception's message (or its type name), shortened."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local folder; `InputError` if the folder holds none."""
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise InputError(f"tokenizer folder {folder} {problem}; pass --tokenizer DIR")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)}); pass --tokenizer DIR")
    from transformers import AutoTokenizer

    offline()
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001  (tokenizer loading raises many unrelated types)
        raise InputError(f"cannot load the tokenizer in {folder}: {first_line(e)}; pass --tokenizer DIR") from e


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str) -> None:
    """`InputError` naming the first floating-point tensor that holds a NaN or an Inf.

    A float32 sum per tensor is the fast screen (one read, no temporary); only a tensor whose sum
    is not finite is counted element by element, so a sum that merely overflows raises nothing.
    A tensor in a mapped file (qpasses.offload) gives its pages back once read."""
    from qpasses.offload import release

    for name, t in tensors:
        if t.is_floating_point() and not torch.isfinite(t.sum(dtype=torch.float32)):
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise InputError(f"{where}: weight {name} holds {bad} NaN/Inf value(s) of {t.numel()}; "
                                 f"the checkpoint is damaged or diverged, use another one")
        release(t)


def combined_sha256(file_digests: dict[str, str]) -> str:
    """One digest for a set of files, from their names and sha256s (order-independent)."""
    lines = "".join(f"{name}\t{digest}\n" for name, digest in sorted(file_digests.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """Digest of a module's state: tensor names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def versions(*extra: str) -> dict[str, str]:
    """Installed versions of the libraries a load went through."""
    names = ("qpasses", "torch", "transformers", "tokenizers", "safetensors", *extra)
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
