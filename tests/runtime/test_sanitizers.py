"""The kernel tests and the fuzzer again, against a build of the library with AddressSanitizer and UBSan.

The sanitized library is built once per source version (cached by a hash of runtime/), then the
op tests run in a child Python with the ASan runtime preloaded and QPASSES_RUNTIME_LIBRARY
pointing at it; any sanitizer report aborts the child and fails this test."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qpasses.cache import cache_dir, locked

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "runtime"


def _gcc_file(name: str) -> str | None:
    out = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and Path(out).exists() else None


def _sanitized_library() -> Path:
    digest = hashlib.sha256()
    for f in sorted(RUNTIME.rglob("*")):
        if f.is_file():
            digest.update(f.relative_to(RUNTIME).as_posix().encode() + f.read_bytes())
    build = cache_dir() / "runtime-sanitized" / digest.hexdigest()[:16]
    lib = build / "libqpasses_ops.so"
    with locked(build.parent / ".lock"):
        if not lib.exists():
            cmake = shutil.which("cmake", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
            for step in ([cmake, "-S", RUNTIME, "-B", build, "-DQPASSES_SANITIZE=ON",
                          "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], [cmake, "--build", build, "-j", "2"]):
                proc = subprocess.run([str(s) for s in step], capture_output=True, text=True)
                assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return lib


def test_kernel_tests_pass_under_asan_and_ubsan():
    asan, libstdcxx = _gcc_file("libasan.so"), _gcc_file("libstdc++.so")
    if not (asan and libstdcxx and shutil.which("g++")):
        pytest.skip("g++ with libasan is not available")
    env = dict(os.environ, QPASSES_RUNTIME_LIBRARY=str(_sanitized_library()),
               LD_PRELOAD=f"{asan} {libstdcxx}",  # libstdc++ too, or ASan cannot intercept C++ throws
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",  # CPython's own allocations are not leaks
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    tests = [str(Path(__file__).with_name(n)) for n in ("test_ops.py", "test_errors.py", "test_fuzz.py")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
