"""Build examples/cpp/generate once per source version (the tests and bench/runners.py use it).

Configured with this Python's cmake against this Python's onnxruntime wheel library, cached under
the qpasses cache keyed by a hash of the sources and that library's path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qpasses.cache import cache_dir, locked

EXAMPLE = Path(__file__).resolve().parent


class Unavailable(RuntimeError):
    """The build cannot run here (no cmake, no compiler, an unexpected wheel); the message says why."""


def ort_library() -> Path:
    import onnxruntime

    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    if len(found) != 1:
        raise Unavailable(f"the onnxruntime wheel has {len(found)} capi/libonnxruntime.so.* files, expected one")
    return found[0]


def build_generate() -> Path:
    """The built `generate` program (configured and compiled on first use, ~10 s)."""
    cmake = shutil.which("cmake", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if cmake is None:
        raise Unavailable("cmake is not installed (pip install cmake, or the system package)")
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c):
        raise Unavailable("no C++ compiler (c++, g++ or clang++) on PATH")
    library = ort_library()
    digest = hashlib.sha256(str(library).encode())
    for f in sorted(EXAMPLE.iterdir()):
        if f.is_file() and f.suffix in {".cc", ".h", ".txt"}:
            digest.update(f.name.encode() + f.read_bytes())
    build = cache_dir() / "cpp-example" / digest.hexdigest()[:16]
    binary = build / "generate"
    with locked(build.parent / ".lock"):
        if not binary.exists():
            for step in ([cmake, "-S", EXAMPLE, "-B", build, f"-DPython3_EXECUTABLE={sys.executable}",
                          f"-DORT_LIBRARY={library}"], [cmake, "--build", build]):
                proc = subprocess.run([str(s) for s in step], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError("building examples/cpp failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    return binary
