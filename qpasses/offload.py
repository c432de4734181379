"""Values kept in mapped files: resident only while they are read.

A run reads its float weights a layer at a time: a forward goes through them in order, and a
layer-sequential pass works on one group while the others wait. `to_file` moves a tensor's values
into an unlinked temporary file mapped shared: the same values under the same shape and dtype,
but its pages count as resident only once touched, and `release` gives the touched ones back
(madvise DONTNEED: a later read faults them in again from the file). The loader, every weight a
stage-A pass writes (`Programs.set_parameter`) and the layer-error probe's copies go through it;
forwards release each weight after its last reader. The file is unlinked before it is mapped,
so a killed run leaves none behind; the kernel frees it with the last mapping, when the tensor is
freed.

The folder must be on a disk: a tmpfs /tmp (Debian 13's default) would hold the values in memory
again, so the pipeline runs inside `scratch(<out>.partial/scratch)`, beside the output folder.
"""

from __future__ import annotations

import contextlib
import mmap
import tempfile
import weakref
from pathlib import Path

import numpy as np

_mapped: dict[int, weakref.ref] = {}  # start address -> a live mapping made by to_file
_folders: list[Path] = []  # the scratch folders in effect, innermost last


@contextlib.contextmanager
def scratch(folder: str | Path):
    """Within the block, `to_file` without a folder writes into `folder`."""
    _folders.append(Path(folder))
    try:
        yield
    finally:
        _folders.pop()


def to_file(t, folder: str | Path | None = None):
    """A tensor equal to `t` (same dtype, shape, values) whose storage is a mapped file in
    `folder` (created if missing; None: the `scratch` folder in effect, else the system's
    temporary folder)."""
    import torch

    t = t.detach().contiguous()
    if t.numel() == 0:
        return t.clone()
    raw = t.view(torch.uint8).reshape(-1).numpy()
    folder = folder if folder is not None else (_folders[-1] if _folders else None)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as f:
        f.write(memoryview(raw))
        f.flush()
        mm = mmap.mmap(f.fileno(), raw.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for address in [a for a, ref in _mapped.items() if ref() is None]:
        del _mapped[address]
    data = np.frombuffer(mm, np.uint8)
    _mapped[data.ctypes.data] = weakref.ref(mm)
    return torch.from_numpy(data).view(t.dtype).view(t.shape)


def release(x=None) -> None:
    """Drop the resident pages of the mapping behind `x`, a torch tensor or a numpy array (None:
    of every live mapping); the values stay in the files. Anything else is left alone."""
    if x is None:
        refs = list(_mapped.values())
    else:
        address = _address(x)
        refs = [ref for start, ref in _mapped.items()
                if address is not None and (mm := ref()) is not None and start <= address < start + len(mm)]
    for ref in refs:
        if (mm := ref()) is not None:
            mm.madvise(mmap.MADV_DONTNEED)


@contextlib.contextmanager
def released_by_module(model):
    """Within the block, every submodule gives its own mapped parameters' pages back after its
    forward: an eager forward holds about one layer's weights."""
    def hook(module, args, output):
        for p in module.parameters(recurse=False):
            release(p)

    handles = [m.register_forward_hook(hook) for m in model.modules() if any(True for _ in m.parameters(False))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _address(x) -> int | None:
    """Where the data of a CPU torch tensor or a numpy array starts; None for anything else
    (fake and meta tensors have no data)."""
    if isinstance(x, np.ndarray):
        return x.__array_interface__["data"][0]
    try:
        return x.data_ptr() if x.device.type == "cpu" else None
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def mapped_bytes() -> int:
    """Bytes held in live mappings (resident or not)."""
    return sum(len(mm) for ref in _mapped.values() if (mm := ref()) is not None)
