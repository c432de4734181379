"""Resumable runs: a layer-sequential pass saves each finished group of linears into
`<out>.partial/`, and a rerun with the same arguments applies the saved groups instead of
solving them again, then goes on from the first missing one.

The folder holds `key.json`, what the checkpoint belongs to (the model's content digest, the
recipe as run, calibration windows, seed, thread count, qpasses and torch versions: everything
that changes the bytes a group's solve writes), and one `.npz` per finished group under a folder
per pass. A folder whose key differs is never reused: it is emptied with one line saying so.
Each group file is written to a temporary name and renamed, so a kill leaves whole files only.
The pipeline removes the folder once the deployment is in place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

KEY_FILE = "key.json"
SCRATCH = "scratch"  # values a run keeps in mapped files (qpasses.offload), unlinked at once


def partial_dir(out: Path) -> Path:
    """The checkpoint folder of an output folder: `<out>.partial` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


class Checkpoint:
    def __init__(self, folder: Path, key: dict, log: Callable[[str], None] = print):
        self.folder, self.log = Path(folder), log
        self.key = {**key, "digest": hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}
        found = self.folder / KEY_FILE
        if self.folder.exists() and not found.is_file() and {p.name for p in self.folder.iterdir()} <= {SCRATCH}:
            shutil.rmtree(self.folder)  # only the scratch folder of a run that saved nothing: no checkpoint
        if self.folder.exists():
            try:
                old = json.loads(found.read_text())
            except (OSError, ValueError):  # missing or damaged: not ours to trust
                old = {}
            if old.get("digest") != self.key["digest"]:
                differs = sorted(k for k in key if old.get(k) != key[k]) or ["its key file"]
                log(f"checkpoint {self.folder} belongs to another run ({', '.join(differs)} differ); starting over")
                shutil.rmtree(self.folder)

    def pass_dir(self, index: int, name: str) -> Path:
        """The folder of the recipe's pass `index` (the checkpoint folder and its key are written
        when a pass first saves, so a run that saves nothing leaves nothing)."""
        return self.folder / f"{index:02d}-{name}"

    def _claim(self) -> None:
        if not (self.folder / KEY_FILE).is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.folder / KEY_FILE, json.dumps(self.key, indent=1).encode())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class GroupStore:
    """One pass's finished groups: `save(i, arrays, meta)` and `load(i)` -> (arrays, meta) or None."""

    def __init__(self, checkpoint: Checkpoint, index: int, name: str):
        self.checkpoint, self.folder = checkpoint, checkpoint.pass_dir(index, name)

    def _path(self, i: int) -> Path:
        return self.folder / f"group-{i:05d}.npz"

    def save(self, i: int, arrays: dict[str, np.ndarray], meta: dict) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays, __meta__=np.array(json.dumps(meta, default=_plain)))
        self.checkpoint._claim()
        self.folder.mkdir(exist_ok=True)
        _write_atomically(self._path(i), buf.getvalue())

    def load(self, i: int) -> tuple[dict[str, np.ndarray], dict] | None:
        path = self._path(i)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "__meta__"}
                return arrays, json.loads(str(data["__meta__"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # damaged: solved again, then overwritten
            return None


def _plain(x):
    """numpy and torch scalars in the notes as JSON numbers."""
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
