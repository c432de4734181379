"""The on-disk cache: where downloaded and converted inputs live, and how they are written.

Everything under `cache_dir()` is written atomically: a file or folder is built under a temporary
name next to its final place and renamed into place, so a crash or a concurrent run never leaves a
half-written entry behind. A lock file serializes expensive builds of the same entry between
processes that share the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qpasses.errors import InputError


def cache_dir() -> Path:
    """`$QPASSES_CACHE`, or `~/.cache/qpasses`; created on demand."""
    root = Path(os.environ.get("QPASSES_CACHE") or Path.home() / ".cache" / "qpasses").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the `with` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A fresh temporary folder next to `final`; deleted on exit, whatever was left in it.

    Callers build a file or folder inside it and `publish` it to its final name before leaving."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(built: Path, final: Path) -> Path:
    """Rename `built` (a file or folder on the same file system) to `final`, atomically.

    If another process published `final` first, its copy is kept and `built` is left for the
    staging folder's clean-up."""
    try:
        os.rename(built, final)  # replaces a file; fails on a folder that is already there
    except OSError:
        if not final.exists():
            raise
    return final


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    with staging_dir(path) as tmp:
        part = tmp / path.name
        part.write_bytes(data)
        return publish(part, path)


def verify_sha256(path: Path, expected: str, what: str) -> Path:
    """Check a file's sha256; on a mismatch delete the file and raise `InputError` saying so."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise InputError(f"{what} {path} has sha256 {actual}, expected {expected}; deleted it: run again to "
                         f"fetch it anew (if it fails again, the source changed)")
    return path
