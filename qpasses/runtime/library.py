"""Where the custom-op library is and which kernel paths this CPU runs: the loader, a leaf."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from qpasses.errors import InputError

LIBRARY_NAME = "libqpasses_ops.so"
ISAS = ("scalar", "avx2", "avx512")


def library_path() -> Path:
    """Path of the built custom-op library (a shared object exporting `RegisterCustomOps`);
    `$QPASSES_RUNTIME_LIBRARY` points at another build (e.g. the sanitizer build of the tests)."""
    override = os.environ.get("QPASSES_RUNTIME_LIBRARY")
    path = Path(override) if override else Path(str(importlib.resources.files("qpasses.runtime") / LIBRARY_NAME))
    if not path.is_file():
        raise InputError(f"the qpasses runtime library {LIBRARY_NAME} is not built; reinstall the package "
                         "(./dev setup, or pip install -e .), which compiles runtime/")
    return path


def available_isas() -> tuple[str, ...]:
    """The kernel paths this CPU can run (from /proc/cpuinfo; scalar always)."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return ("scalar",)
    isas = ["scalar"]
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"} <= flags:
        isas.append("avx512")
    return tuple(isas)
