"""Write the deployable folder: model.onnx (logits), decoder_model.onnx (KV-cache step), one
shared external-data file model.onnx.data, the tokenizer files and chat template.

Every initializer of at least `EXTERNAL_MIN_BYTES` lives in model.onnx.data, written once
under its name; both graphs point at the same offset, so a weight the two graphs share (all of
them) and the tied embedding/lm_head table take disk space once. Same name must mean same
bytes across the graphs; a mismatch is an error, never a silent pick. Offsets are aligned to
`ALIGNMENT` bytes so runtimes can map the file.

The folder is written next to its destination under a temporary name and renamed into place:
nobody ever sees a half-written folder. An existing non-empty destination is refused unless
force, which moves it aside, moves the new folder in, then deletes the old one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import onnx_ir as ir

from qpasses.errors import InputError, PostconditionError
from qpasses.export.onnx_export import OnnxModels
from qpasses.ir.cleanup import large_initializers

DATA_FILE = "model.onnx.data"
GRAPH_FILES = {"logits": "model.onnx", "decoder": "decoder_model.onnx"}
ALIGNMENT = 4096


@contextmanager
def staged(out_dir: Path, force: bool = False):
    """A temporary folder next to `out_dir` that becomes `out_dir` when the block succeeds and
    vanishes when it fails: readers never see a half-written deployment."""
    out_dir = Path(out_dir)
    check_destination(out_dir, force)
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    with _cannot_write(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    try:
        yield tmp
        _move_into_place(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_deployment(models: OnnxModels, folder: Path, tokenizer, metadata: dict[str, str]) -> None:
    """Write the graphs, their shared data file and the tokenizer into an empty `folder`.

    `metadata` is set as metadata_props on both models (in memory too)."""
    graphs = {GRAPH_FILES[name]: m for name, m in (("logits", models.logits), ("decoder", models.decoder))
              if m is not None}
    offsets = _write_data(graphs.values(), folder / DATA_FILE)
    for filename, model in graphs.items():
        model.metadata_props.update(metadata)
        _write_graph(model, folder / filename, offsets)
    tokenizer.save_pretrained(folder)


def save_deployment(models: OnnxModels, out_dir: Path, tokenizer, metadata: dict[str, str],
                    force: bool = False) -> list[Path]:
    """Write the folder (see the module docstring) atomically; return the paths of its files."""
    with staged(out_dir, force) as folder:
        write_deployment(models, folder, tokenizer, metadata)
    return sorted(p for p in Path(out_dir).rglob("*") if p.is_file())


def _occupied(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse a non-empty destination unless force, and one that cannot be written (callers check
    early, before the long work; nothing is created: a probe folder in the nearest existing
    ancestor is made and removed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {out_dir} is a file; choose another --out")
    if _occupied(out_dir) and not force:
        raise InputError(f"output folder {out_dir} already exists and is not empty; "
                         "pass --force to replace it")
    base = next(p for p in (out_dir.absolute(), *out_dir.absolute().parents) if p.exists())
    with _cannot_write(out_dir):
        if not base.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(base))
        probe = base / f".qpasses-probe.{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()


@contextmanager
def _cannot_write(out_dir: Path):
    """OSError -> InputError naming the output folder and the cause."""
    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise InputError(f"cannot write the output folder {out_dir}: {e.strerror or e}{where}; "
                         "choose another --out") from None


def _write_data(models, path: Path) -> dict[str, tuple[int, int]]:
    """Write every large initializer once; return name -> (offset, length)."""
    tensors: dict[str, ir.TensorProtocol] = {}
    for model in models:
        for name, value in large_initializers(model.graph).items():
            seen = tensors.setdefault(name, value.const_value)
            if seen is not value.const_value and not _same(seen, value.const_value):
                raise PostconditionError(f"initializer {name} holds different values in the two graphs; "
                                         "a shared name must mean the same tensor")
    offsets = {}
    with open(path, "wb") as f:
        for name, tensor in tensors.items():
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
            data = tensor.tobytes()
            offsets[name] = (f.tell(), len(data))
            f.write(data)
    return offsets


def _same(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _write_graph(model: ir.Model, path: Path, offsets: dict[str, tuple[int, int]]) -> None:
    """Serialize with large initializers pointing into the data file; the model is unchanged."""
    values = large_initializers(model.graph)
    saved = {name: v.const_value for name, v in values.items()}
    try:
        for name, v in values.items():
            offset, length = offsets[name]
            v.const_value = ir.ExternalTensor(DATA_FILE, offset, length, v.const_value.dtype,
                                              shape=v.const_value.shape, name=name, base_dir=path.parent)
        path.write_bytes(ir.to_proto(model).SerializeToString())
    finally:
        for name, v in values.items():
            v.const_value = saved[name]


def _move_into_place(tmp: Path, out_dir: Path, force: bool) -> None:
    if not _occupied(out_dir):
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
        return
    check_destination(out_dir, force)
    old = tmp.with_suffix(".old")
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
