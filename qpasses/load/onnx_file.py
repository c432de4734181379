"""An .onnx file as compiler input (kind "onnx").

Checked before anything else reads it: the protobuf parses and passes the ONNX checker, every
external-data location is a relative path that stays inside the model's folder, names a file that
exists and covers the tensor's bytes, and no floating-point weight holds a NaN or an Inf. The
tokenizer comes from the `tokenizer` folder or from the folder of the .onnx file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qpasses.cache import sha256_file
from qpasses.errors import InputError
from qpasses.load.common import TOKENIZER_FILES, LoadedModel, combined_sha256, first_line, load_tokenizer, versions
from qpasses.runtime.ort import all_tensors, check_external_data

FLOAT_TYPES = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")


def load(path: Path, tokenizer: Path | None = None) -> LoadedModel:
    """Validate the file and pair it with its tokenizer; the graph itself is loaded by the compiler."""
    import onnx

    proto = _parse(path)
    data_files = check_external_data(proto, path)
    try:
        onnx.checker.check_model(str(path))  # by path: external data resolves against its folder
    except onnx.checker.ValidationError as e:
        raise InputError(f"{path} is not a valid ONNX model ({first_line(e)}); export it again") from e
    _check_finite(proto, path)
    if tokenizer is None and not any((path.parent / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"no tokenizer next to {path}; pass --tokenizer DIR")
    tok = load_tokenizer(tokenizer if tokenizer is not None else path.parent)
    files = {path.name: sha256_file(path)} | {loc: sha256_file(path.parent / loc) for loc in sorted(data_files)}
    source = {"type": "onnx", "path": str(path.resolve()), "files": files,
              "sha256": files[path.name] if len(files) == 1 else combined_sha256(files),
              "tokenizer": str((tokenizer if tokenizer is not None else path.parent).resolve()),
              "versions": versions("onnx", "onnxruntime")}
    name = path.parent.resolve().name if path.stem == "model" else path.stem
    return LoadedModel(name=name, kind="onnx", model=None, onnx_path=path, tokenizer=tok, source=source)


def _parse(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"{path} is not a readable ONNX file ({first_line(e)}): it is corrupt or truncated; "
                         f"export or copy it again") from e


def _check_finite(proto, path: Path) -> None:
    """NaN/Inf check on every floating-point tensor, reading external data as it goes."""
    from onnx import TensorProto, numpy_helper

    float_types = {getattr(TensorProto, n) for n in FLOAT_TYPES}
    for t in all_tensors(proto):
        if t.data_type not in float_types:
            continue
        values = numpy_helper.to_array(t, base_dir=str(path.parent)).astype(np.float32, copy=False)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise InputError(f"{path}: weight {t.name} holds {bad} NaN/Inf value(s) of {values.size}; "
                             f"the model is damaged or diverged, use another one")
