"""The custom-op library a deployed graph needs, copied into its folder.

A graph that imports the `qpasses` domain runs only with `libqpasses_ops.so` registered; the folder
carries the library so a runner (onnxruntime-genai's `custom_ops_library`, which must lie inside
the folder; optimum or plain onnxruntime through `register_custom_ops_library`) needs nothing but
the folder. The library is native code: the manifest records the platform it was built for, and
another platform compiles the model with a stock-op lowering target instead (docs/recipes.md).
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import sys
from pathlib import Path

import onnx_ir as ir

from qpasses.domain import DOMAIN
from qpasses.runtime import LIBRARY_NAME, library_path


def build_platform() -> str:
    """What the library runs on: OS, CPU architecture and C library, e.g. linux-x86_64-glibc2.36."""
    libc, version = platform.libc_ver()
    return "-".join(p for p in (sys.platform, platform.machine(), f"{libc}{version}" if libc else "") if p)


def copy_runtime(model: ir.Model, folder: Path, copy: bool = True) -> dict:
    """Copy the library into `folder` when `model` uses our ops (unless not `copy`); returns the
    manifest's record of it ({} for a graph of standard ops only)."""
    if DOMAIN not in model.opset_imports:
        return {}
    record = {"library": LIBRARY_NAME, "domain": DOMAIN, "platform": build_platform(), "in_folder": copy}
    if copy:
        source = library_path()
        shutil.copy2(source, Path(folder) / LIBRARY_NAME)
        record["sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    return record
