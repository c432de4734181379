"""The evaluation and calibration texts: English prose from pinned Debian packages.

- "eval": the GNU Coding Standards (`gnu-standards` 2022.03.23-0.1, GFDL-1.3);
- "calib": the Debian Reference (`debian-reference-en` 2.100, GPL-2+).

Each is fetched with `apt-get download PKG=VERSION` into a temporary folder, the one gzipped text
is taken out of `dpkg-deb --fsys-tarfile` with tarfile and gzip, and its sha256 is checked before
it is cached under `<cache>/texts/`. The texts are never committed: they are fetched on first use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qpasses.cache import cache_dir, locked, sha256_file, write_bytes_atomic
from qpasses.errors import InputError


@dataclass(frozen=True)
class DebianText:
    package: str
    version: str
    member: str  # path of the gzipped text inside the package
    sha256: str  # of the text after gunzip

    @property
    def filename(self) -> str:
        return f"{self.package}_{self.version}_{Path(self.member).name.removesuffix('.gz')}"


TEXTS = {
    "eval": DebianText("gnu-standards", "2022.03.23-0.1", "usr/share/doc/gnu-standards/standards.text.gz",
                       "45dbac535b379e14cd79db92b3f1016345232b3b8fb4c93fa298bd9d331076c4"),
    "calib": DebianText("debian-reference-en", "2.100", "usr/share/debian-reference/debian-reference.en.txt.gz",
                        "fc8dce7f9d076f78432b74cc91555017c855d19d5bbc5b8e7e3ad472f00ec6cf"),
}
_updated = False  # `apt-get update` runs at most once per process


def debian_text(which: str) -> Path:
    """Path of the cached text `which` ("eval" or "calib"), fetched and checked on first use."""
    if which not in TEXTS:
        raise InputError(f"unknown text {which!r}; known: {', '.join(TEXTS)}")
    spec = TEXTS[which]
    path = cache_dir() / "texts" / spec.filename
    with locked(path.parent / f".{spec.filename}.lock"):
        if path.is_file():
            return check_cached(path, spec)
        with tempfile.TemporaryDirectory(prefix="qpasses-apt-") as tmp:
            deb = apt_download(spec.package, spec.version, Path(tmp))
            data = extract_text(deb, spec.member)
        actual = hashlib.sha256(data).hexdigest()
        if actual != spec.sha256:
            raise InputError(f"{spec.member} of {spec.package}={spec.version} has sha256 {actual}, expected "
                             f"{spec.sha256}: the package in the archive changed; nothing was cached")
        return write_bytes_atomic(path, data)


def check_cached(path: Path, spec: DebianText) -> Path:
    """The cached text, if its sha256 is the pinned one; else it is deleted and `InputError` says so."""
    actual = sha256_file(path)
    if actual != spec.sha256:
        path.unlink(missing_ok=True)
        raise InputError(f"cached text {path} has sha256 {actual}, expected {spec.sha256}; deleted it: run again "
                         f"to fetch {spec.package}={spec.version} anew")
    return path


def apt_download(package: str, version: str, dest: Path) -> Path:
    """`apt-get download package=version` in `dest`; one `apt-get update` and a retry (as root)
    when apt does not know the version. Returns the .deb."""
    global _updated
    if shutil.which("apt-get") is None:
        raise InputError(f"apt-get not found: fetching {package}={version} needs a Debian system; "
                         f"pass a text file instead")
    result = _run(["apt-get", "download", f"{package}={version}"], dest)
    if result.returncode != 0 and _unknown_version(result.stderr) and os.geteuid() == 0 and not _updated:
        _updated = True
        update = _run(["apt-get", "update"], dest)
        if update.returncode != 0:
            raise InputError(f"apt-get update failed: {_last_error(update.stderr)}")
        result = _run(["apt-get", "download", f"{package}={version}"], dest)
    if result.returncode != 0:
        if _unknown_version(result.stderr):
            raise InputError(f"apt does not know {package}={version}: run `apt-get update` as root (the pinned "
                             f"version is the one of Debian 12 bookworm)")
        raise InputError(f"apt-get download {package}={version} failed: {_last_error(result.stderr)}")
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise InputError(f"apt-get download {package}={version} left no .deb in {dest}")
    return debs[0]


def extract_text(deb: Path, member: str) -> bytes:
    """The gunzipped bytes of `member` (a .gz path) inside the .deb's file-system tar."""
    result = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if result.returncode != 0:
        raise InputError(f"dpkg-deb cannot read {deb.name}: {_last_error(result.stderr.decode(errors='replace'))}")
    with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:") as tar:
        names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        if member not in names:
            raise InputError(f"{deb.name} has no file {member}; the package changed, pin another version")
        compressed = tar.extractfile(names[member]).read()
    try:
        return gzip.decompress(compressed)
    except (OSError, EOFError) as e:
        raise InputError(f"{member} in {deb.name} is not valid gzip ({e}); the download is damaged") from e


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def _unknown_version(stderr: str) -> bool:
    return any(s in stderr for s in ("Unable to locate package", "Can't find a matching", "was not found"))


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["no output"])[-1]
