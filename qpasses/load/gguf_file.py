"""A GGUF file, dequantized to fp32 once by transformers and cached as a plain Hugging Face folder.

transformers (with `gguf` and `accelerate` installed) dequantizes every tensor in numpy, which takes
seconds; the result is a model carrying `quantization_config = {quant_method: gguf}` that refuses
`save_pretrained`. So it is rebuilt as a plain model of the same class, its state copied over, and
saved with the tokenizer (chat template included) under `<cache>/models/<name>-<sha256[:12]>/`.
That folder is written under a temporary name and renamed, so it is complete whenever it exists;
later loads read it directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qpasses.cache import cache_dir, locked, publish, sha256_file, staging_dir
from qpasses.errors import InputError
from qpasses.load import hf_folder
from qpasses.load.common import LoadedModel, check_finite, first_line, load_tokenizer, offline, versions

SOURCE_FILE = "qpasses-source.json"  # provenance of the conversion, kept inside the cached folder


def cached_folder(name: str, sha256: str) -> Path:
    """Where the converted model of GGUF content `sha256` lives."""
    return cache_dir() / "models" / f"{name}-{sha256[:12]}"


def load_cached(folder: Path, name: str, tokenizer=None) -> LoadedModel:
    """Load a folder written by `convert`; `tokenizer` (an already loaded one) replaces its own."""
    try:
        source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
        loaded = hf_folder.load(folder, None, name=name, source=source)
    except (InputError, OSError, ValueError) as e:
        raise InputError(f"the cached model {folder} is damaged ({first_line(e)}); delete that folder and "
                         f"run again") from e
    if tokenizer is not None:
        loaded.tokenizer = tokenizer
        loaded.source["tokenizer"] = tokenizer.name_or_path
    return loaded


def load(path: Path, tokenizer: Path | None = None, name: str | None = None) -> LoadedModel:
    """Load any GGUF file by content: converted on first use, from the cache afterwards."""
    if not path.is_file():
        raise InputError(f"GGUF file {path} does not exist")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    name = name or path.stem
    sha = sha256_file(path)
    folder = cached_folder(name, sha)
    if not folder.is_dir():
        check_gguf(path)
        convert(path, folder, {"type": "gguf", "path": str(path.resolve()), "sha256": sha})
    return load_cached(folder, name, tok)


def check_gguf(path: Path) -> None:
    """Parse the GGUF header and tensor table; `InputError` if the file is not a whole GGUF file.

    Costs seconds on a real model (the tokenizer metadata is parsed item by item), so it is for
    files of unknown content; a file whose sha256 was checked against a pin skips it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InputError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); use the original file")
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001  (the reader raises ValueError, IndexError, struct errors...)
        raise InputError(f"{path} is a corrupt or truncated GGUF file ({first_line(e)}); fetch it again") from e


def convert(gguf: Path, folder: Path, source: dict, bar: tqdm | None = None) -> Path:
    """Dequantize `gguf` (a checked file) to fp32 and publish it as a Hugging Face folder at `folder`.

    Serialized between processes by a lock; a folder published meanwhile by another process is
    kept. `source` (plus versions) is stored in the folder as the provenance of later loads."""
    with locked(folder.parent / f".{folder.name}.lock"):
        if folder.is_dir():
            return folder
        own_bar = bar is None
        bar = bar or tqdm(total=2, bar_format="{desc} [{elapsed}]", desc=f"converting {gguf.name}")
        try:
            bar.set_description_str(f"dequantizing {gguf.name} to fp32 (transformers)")
            model, tok = dequantize(gguf)
            bar.update()
            bar.set_description_str(f"saving the fp32 cache to {folder}")
            with staging_dir(folder) as tmp:
                built = tmp / folder.name
                model.save_pretrained(str(built))
                tok.save_pretrained(str(built))
                record = {**source, "converted_with": versions("gguf", "accelerate")}
                (built / SOURCE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
                publish(built, folder)
            bar.update()
            bar.set_description_str(f"cached {folder.name}")
        finally:
            if own_bar:
                bar.close()
    return folder


def dequantize(gguf: Path):
    """A plain fp32 model rebuilt from the dequantized weights of `gguf`, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline()
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    except Exception as e:  # noqa: BLE001  (unsupported architectures, bad metadata, missing gguf/accelerate)
        raise InputError(f"transformers cannot load {gguf}: {first_line(e)}") from e
    config = loaded.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        config.pop(key, None)
    plain = type(loaded)(type(loaded.config)(**config))
    plain.load_state_dict(loaded.state_dict(), strict=True)
    check_finite(plain.state_dict().items(), str(gguf))
    return plain.eval(), tok
