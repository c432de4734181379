"""Our ONNX Runtime custom-op library: the ops of domain "qpasses" (MatMulMXFP4, MatMulInt4).

The C++ lives in `runtime/` and is built by the package install into this folder. Use
`session(path)` for a ready onnxruntime session, or `library_path()` to register the library
with any other ORT front end (`SessionOptions.register_custom_ops_library(path)`).
`QPASSES_ISA=scalar|avx2|avx512` forces a kernel path (read when a session is created).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from qpasses.domain import DOMAIN, DOMAIN_VERSION
from qpasses.errors import InputError

__all__ = ["DOMAIN", "DOMAIN_VERSION", "ISAS", "LIBRARY_NAME", "available_isas", "library_path", "session"]

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


def session(path: Path | str, threads: int | None = None, optimization: str | None = None,
            extra_config: dict[str, str] | None = None):
    """An onnxruntime session on `path` with our ops registered (see `qpasses.evaluate.ort_session`)."""
    from qpasses.evaluate.session import ort_session

    return ort_session(path, threads=threads, optimization=optimization, extra_config=extra_config,
                       register_libraries=[str(library_path())])


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
