"""An .onnx file as compiler input (kind "onnx").

Checked before anything else reads it: the protobuf parses and passes the ONNX checker, every
external-data location is a relative path that stays inside the model's folder, names a file that
exists and covers the tensor's bytes, and no linear weight holds a NaN or an Inf. Only linear
weights are checked (the constant operand B of a MatMul or Gemm, directly or through a Transpose:
what stage B's linear sites are): other constants may legitimately hold -inf or -3.4e38 (the
attention masks of the legacy `torch.onnx.export` and of optimum), and an embedding table is
checked by the pass that quantizes it. The tokenizer comes from the `tokenizer` folder or from the
folder of the .onnx file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qpasses.cache import sha256_file
from qpasses.errors import InputError
from qpasses.load.common import TOKENIZER_FILES, LoadedModel, combined_sha256, first_line, load_tokenizer, versions
from qpasses.runtime.ort import check_external_data

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
    """NaN/Inf check on every linear weight of the main graph, reading external data as it goes."""
    from onnx import numpy_helper

    for where, t in linear_weights(proto.graph):
        values = numpy_helper.to_array(t, base_dir=str(path.parent)).astype(np.float32, copy=False)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise InputError(f"{path}: weight {where} holds {bad} NaN/Inf value(s) of {values.size}; "
                             f"the model is damaged or diverged, use another one")


def linear_weights(graph) -> list[tuple[str, object]]:
    """(what to call it, TensorProto) of each floating-point 2-D constant that a MatMul or Gemm reads
    as its weight B, directly or through a Transpose: an initializer, or a `Constant` node's value
    (named by the node and its output, since such a tensor usually has no name of its own)."""
    from onnx import TensorProto

    float_types = {getattr(TensorProto, n) for n in FLOAT_TYPES}
    consts: dict[str, tuple[str, object]] = {t.name: (t.name, t) for t in graph.initializer}
    transposed: dict[str, str] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant" and node.output:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None and attr.HasField("t"):
                out = node.output[0]
                where = f"Constant node {node.name!r} (output {out!r})" if node.name else \
                    f"{out!r} (the output of a Constant node without a name)"
                consts[out] = (where, attr.t)
        elif node.op_type == "Transpose" and node.input and node.output:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            if perm == [1, 0]:
                transposed[node.output[0]] = node.input[0]
    found: dict[str, tuple[str, object]] = {}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        b = node.input[1]
        b = transposed.get(b, b) if node.op_type == "MatMul" and b not in consts else b
        if b in consts and b not in found:
            where, t = consts[b]
            if t.data_type in float_types and len(t.dims) == 2:
                found[b] = (where, t)
    return list(found.values())
