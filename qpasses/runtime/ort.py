"""onnxruntime sessions whose graph optimizations are chosen on purpose and can be reported.

At the higher optimization levels ORT rewrites `DequantizeLinear(int4) + MatMul` into
`com.microsoft::MatMulNBits` with the accuracy level taken from the session config entry
`QDQ_MATMULNBITS_ACCURACY_LEVEL` (ORT's default, "4", quantizes the activations to int8 inside
the kernel). A W4A16 file evaluated that way silently measures W4A8. So every session built
here resolves its optimization level and config entries from, in order of precedence:

1. the explicit arguments of `ort_session` / `ort_settings`;
2. the model's own ONNX metadata entry `qpasses.ort`, a JSON object written by our compiler,
   e.g. `{"optimization": "all", "config": {"session.qdq_matmulnbits_accuracy_level": "0"}}`;
3. the default: optimization "all" and no config entries (ORT's own defaults).

Config entries merge key by key: an explicit entry replaces the metadata entry of the same key.
Every file is checked first: it parses and its external-data references stay inside its folder,
exist and cover their bytes (`check_external_data`, which the ONNX input loader runs too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qpasses.domain import DOMAIN
from qpasses.errors import InputError
from qpasses.runtime.library import library_path
from qpasses.runtime.min_ort import check_installed, metadata_minimum

ORT_OPT_LEVELS = {"disable", "basic", "extended", "all"}
DEFAULT_OPTIMIZATION = "all"
METADATA_KEY = "qpasses.ort"
# Accuracy level of the MatMulNBits nodes that ORT creates when it fuses DQ + MatMul
# (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations; ORT's default is 4). Levels 0-3 keep
# a W4A16 model W4A16 on CPU; 4 makes it W4A8. The fusion runs from the "extended" level up.
QDQ_MATMULNBITS_ACCURACY_LEVEL = "session.qdq_matmulnbits_accuracy_level"


@dataclass(frozen=True)
class OrtSettings:
    """The resolved optimization level and session config entries, with where each came from."""

    optimization: str
    config: dict[str, str] = field(default_factory=dict)
    source: str = "default"  # where the optimization level came from: "argument", "metadata" or "default"

    def describe(self) -> str:
        """One line for logs and reports, e.g. `optimization=all (metadata), session.x=0`."""
        parts = [f"optimization={self.optimization} ({self.source})"]
        parts += [f"{k}={v}" for k, v in sorted(self.config.items())]
        return ", ".join(parts)


def ort_settings(path: Path | str, optimization: str | None = None,
                 extra_config: Mapping[str, str] | None = None) -> OrtSettings:
    """Resolve the settings `ort_session` would use for `path` (see the module docstring).

    Also checks that the file parses and that its external-data files exist and are long enough,
    raising `InputError` otherwise."""
    return _settings(_read_model(Path(path)), Path(path), optimization, extra_config)


def _settings(proto, path: Path, optimization: str | None, extra_config: Mapping[str, str] | None) -> OrtSettings:
    meta = _metadata_settings(proto, path)
    if optimization is not None:
        level, source = _check_level(optimization, "the optimization argument"), "argument"
    elif "optimization" in meta:
        level, source = meta["optimization"], "metadata"
    else:
        level, source = DEFAULT_OPTIMIZATION, "default"
    config = dict(meta.get("config", {}))
    config.update(_check_config(extra_config or {}, "the extra_config argument"))
    return OrtSettings(level, config, source)


def ort_session(path: Path | str, threads: int | None = None, optimization: str | None = None,
                extra_config: dict[str, str] | None = None, register_libraries: Sequence[str] = ()):
    """An `onnxruntime.InferenceSession` on the CPU provider for the ONNX file `path`.

    threads: intra-op threads (None: ORT's default, all cores). optimization: one of
    `ORT_OPT_LEVELS`; with `extra_config` it overrides the model's `qpasses.ort` metadata.
    register_libraries: custom-op shared libraries to register before the model is loaded; by
    default our own (qpasses.runtime) when the model imports its domain.
    A missing or corrupt model, external-data file or library raises `InputError`, and so does an
    onnxruntime older than the model's `qpasses.onnxruntime_min` metadata (runtime.min_ort)."""
    import onnxruntime as ort

    path = Path(path)
    proto = _read_model(path)
    need = metadata_minimum({p.key: p.value for p in proto.metadata_props}, str(path))
    check_installed(need, ort.__version__, str(path))
    settings = _settings(proto, path, optimization, extra_config)
    if not register_libraries and any(op.domain == DOMAIN for op in proto.opset_import):
        register_libraries = [str(library_path())]
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        so.intra_op_num_threads = threads
    for key, value in settings.config.items():
        so.add_session_config_entry(key, value)
    for lib in register_libraries:
        if not Path(lib).is_file():
            raise InputError(f"custom-op library {lib} does not exist")
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as e:  # noqa: BLE001  (ORT raises its own untyped errors)
            raise InputError(f"cannot register custom-op library {lib}: {_first_line(e)}") from e
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise InputError(f"onnxruntime cannot load {path}: {_first_line(e)}") from e


def session(path: Path | str, threads: int | None = None, optimization: str | None = None,
            extra_config: dict[str, str] | None = None):
    """An onnxruntime session on `path` with our ops registered (see `ort_session`)."""
    return ort_session(path, threads=threads, optimization=optimization, extra_config=extra_config,
                       register_libraries=[str(library_path())])


def _read_model(path: Path):
    """The ModelProto of `path` without its weights, after checking its external-data files."""
    import onnx

    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf decode errors have no common public base)
        raise InputError(f"{path} is not a readable ONNX file: {_first_line(e)}") from e
    if not proto.HasField("graph"):
        raise InputError(f"{path} is not an ONNX model (it holds no graph)")
    check_external_data(proto, path)
    return proto


def all_tensors(proto) -> Iterator:
    """Every TensorProto of a model: initializers, sparse initializers and tensor attributes, in
    the main graph, its subgraphs and the model's functions."""

    def in_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from in_graph(attr.g)
                for g in attr.graphs:
                    yield from in_graph(g)

    def in_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from in_nodes(graph.node)

    yield from in_graph(proto.graph)
    for function in proto.functions:
        yield from in_nodes(function.node)


def check_external_data(proto, path: Path) -> set[str]:
    """Check every external-data reference of the model at `path`; return the locations used."""
    from onnx import TensorProto

    folder = path.parent
    used = set()
    for t in all_tensors(proto):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location:
            raise InputError(f"{path}: tensor {t.name} is marked external but names no data file; export it again")
        normal = os.path.normpath(location)
        if os.path.isabs(location) or normal == ".." or normal.startswith(".." + os.sep):
            raise InputError(f"{path}: tensor {t.name} keeps its data at {location!r}, outside the model's folder; "
                             f"save the model with its data files beside it (relative locations)")
        data = folder / normal
        if data.exists() and not data.resolve().is_relative_to(folder.resolve()):
            raise InputError(f"{path}: external data file {location} (tensor {t.name}) is a link to "
                             f"{data.resolve()}, outside the model's folder; copy the file into {folder}")
        if not data.is_file():
            raise InputError(f"{path}: external data file {location} (tensor {t.name}) is missing; "
                             f"copy it into {folder}")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        size = data.stat().st_size
        if end > size:
            raise InputError(f"{path}: external data file {location} is truncated (tensor {t.name} needs "
                             f"{end} bytes, the file has {size}); copy it again")
        used.add(normal)
    return used


def _metadata_settings(proto, path: Path) -> dict:
    """The validated `qpasses.ort` metadata entry of a model, or {} when it has none."""
    raw = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    return parse_settings(raw, f"metadata {METADATA_KEY} of {path}")


def parse_settings(raw: str | None, where: str) -> dict:
    """The validated settings of a `qpasses.ort` metadata value ({"optimization", "config"}; {} for None)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{where} is not JSON: {e}") from e
    if not isinstance(meta, dict) or set(meta) - {"optimization", "config"}:
        raise InputError(f"{where} must be a JSON object with keys 'optimization' and 'config', got {raw!r}")
    out = {}
    if meta.get("optimization") is not None:
        out["optimization"] = _check_level(meta["optimization"], where)
    if meta.get("config") is not None:
        out["config"] = _check_config(meta["config"], where)
    return out


def _check_level(level, where: str) -> str:
    if level not in ORT_OPT_LEVELS:
        raise InputError(f"{where}: unknown optimization level {level!r} for onnxruntime; "
                         f"use one of {sorted(ORT_OPT_LEVELS)}")
    return level


def _check_config(config, where: str) -> dict[str, str]:
    """Session config entries as strings; integers are accepted and converted."""
    if not isinstance(config, Mapping):
        raise InputError(f"{where}: session config must be a mapping of strings, got {config!r}")
    out = {}
    for key, value in config.items():
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(key, str) or not isinstance(value, str):
            raise InputError(f"{where}: session config entry {key!r}: {value!r} must map a string to a string")
        out[key] = value
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
