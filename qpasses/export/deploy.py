"""Write the deployable folder: model.onnx, its external-data file model.onnx.data, the tokenizer
files and chat template.

model.onnx is the KV-cache step graph (input_ids, attention_mask, position_ids,
past_key_values.{i}.key/value -> logits, present.{i}.key/value), the graph runners load by
default; an empty past makes it the whole-sequence graph perplexity runs. A model compiled from
an ONNX file without a cache graph deploys its logits graph under the same name.

Every initializer of at least `EXTERNAL_MIN_BYTES` lives in model.onnx.data, the tied
embedding/lm_head table once. Offsets are aligned to `ALIGNMENT` bytes so runtimes can map the file.

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

from qpasses.errors import InputError
from qpasses.export.onnx_export import OnnxModels
from qpasses.ir.cleanup import large_initializers

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
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


def deployed_graph(models: OnnxModels) -> ir.Model:
    """The graph the folder ships: the KV-cache step graph, else (an ONNX input without one) the logits graph."""
    return models.decoder if models.decoder is not None else models.logits


def write_deployment(models: OnnxModels, folder: Path, tokenizer, metadata: dict[str, str]) -> None:
    """Write model.onnx (`deployed_graph`), its data file and the tokenizer into an empty `folder`.

    `metadata` is set as the graph's metadata_props (in memory too)."""
    model = deployed_graph(models)
    model.metadata_props.update(metadata)
    _write_graph(model, folder / MODEL_FILE, _write_data(model, folder / DATA_FILE))
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


def _write_data(model: ir.Model, path: Path) -> dict[str, tuple[int, int]]:
    """Write every large initializer; return name -> (offset, length)."""
    offsets = {}
    with open(path, "wb") as f:
        for name, value in large_initializers(model.graph).items():
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
            data = value.const_value.tobytes()
            offsets[name] = (f.tell(), len(data))
            f.write(data)
    return offsets


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
