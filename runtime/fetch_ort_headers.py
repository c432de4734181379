#!/usr/bin/env python3
"""Fetch the ONNX Runtime C/C++ API headers our custom-op library is compiled against.

PyPI's onnxruntime wheels ship no headers; Debian trixie's `libonnxruntime-dev` does. This
script downloads that one .deb with `apt-get download` through a private package list (the
system's apt state is never touched, nothing is installed), checks its pinned sha256, and
unpacks only `usr/include/onnxruntime` into the cache:

    $QPASSES_CACHE (default ~/.cache/qpasses) / ort-headers / <version> / onnxruntime_c_api.h ...

It prints that folder on stdout and is idempotent (a second call only prints). The headers set
ORT_API_VERSION 21; the library asks for API 17 (ops.cc) and runs in onnxruntime >= 1.17. Standard library only: CMake
runs it at configure time inside pip's isolated build environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "libonnxruntime-dev"
VERSION = "1.21.0+dfsg-1"
SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
SUITE = "trixie"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def fail(message: str) -> None:
    print(f"fetch_ort_headers: error: {message}", file=sys.stderr)
    sys.exit(2)


def cache_root() -> Path:
    return Path(os.environ.get("QPASSES_CACHE") or Path.home() / ".cache" / "qpasses").expanduser()


def system_mirror() -> str:
    """The Debian mirror this machine already uses (deb822 or one-line sources), else deb.debian.org."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for pattern in (r"^URIs:\s*(\S+/debian)/?\s*$", r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s"):
            if match := re.search(pattern, text, re.M):
                return match.group(1)
    return DEFAULT_MIRROR


def run(cmd: list[str], what: str) -> str:
    if shutil.which(cmd[0]) is None:
        fail(f"{cmd[0]} not found; the headers come from a Debian package ({PACKAGE}), which needs "
             "apt-get and dpkg-deb. Elsewhere, set ORT_INCLUDE_DIR to a folder holding onnxruntime_c_api.h")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"{what} failed ({' '.join(cmd[:2])} ...):\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def apt_options(work: Path) -> list[str]:
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "archives" / "partial").mkdir(parents=True)
    signed = f"[signed-by={KEYRING}] " if Path(KEYRING).exists() else ""
    (work / "sources.list").write_text(f"deb {signed}{system_mirror()} {SUITE} main\n")
    return [f"-oDir::Etc::SourceList={work / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache::Archives={work / 'archives'}",
            "-oDir::State::status=/dev/null", "-oDebug::NoLocking=1"]


def download(work: Path) -> Path:
    opts = apt_options(work)
    run(["apt-get", *opts, "update"], f"apt-get update of Debian {SUITE}'s package list")
    listed = run(["apt-cache", *opts, "show", PACKAGE], f"looking up {PACKAGE} in Debian {SUITE}")
    versions = re.findall(r"^Version:\s*(\S+)", listed, re.M)
    if VERSION not in versions:
        fail(f"Debian {SUITE} no longer has {PACKAGE} {VERSION}; it has {', '.join(versions) or 'none'}. "
             f"Pin that version instead: set VERSION and SHA256 in {Path(__file__).name} (the SHA256 "
             "line of `apt-cache show`), and raise the onnxruntime floor to the new ORT_API_VERSION")
    out = work / "deb"
    out.mkdir()
    proc = subprocess.run(["apt-get", *opts, "download", f"{PACKAGE}={VERSION}"], cwd=out,
                          capture_output=True, text=True)
    debs = list(out.glob("*.deb"))
    if proc.returncode != 0 or len(debs) != 1:
        fail(f"apt-get download {PACKAGE}={VERSION} failed:\n{proc.stderr.strip()}")
    return debs[0]


def fetch() -> Path:
    target = cache_root() / "ort-headers" / VERSION
    if (target / "onnxruntime_c_api.h").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        deb = download(work)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        if digest != SHA256:
            fail(f"{deb.name} has sha256 {digest}, expected the pinned {SHA256}; refusing to use it")
        run(["dpkg-deb", "-x", str(deb), str(work / "root")], f"unpacking {deb.name}")
        include = work / "root" / "usr" / "include" / "onnxruntime"
        if not (include / "onnxruntime_c_api.h").is_file():
            fail(f"{deb.name} holds no usr/include/onnxruntime/onnxruntime_c_api.h")
        try:
            include.rename(target)  # atomic; a concurrent fetch that won the race is fine too
        except OSError:
            if not (target / "onnxruntime_c_api.h").is_file():
                raise
    return target


if __name__ == "__main__":
    print(fetch())
