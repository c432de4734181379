"""The Debian texts: extraction from a real (locally built) .deb, sha256 checks, apt-get's failures
with apt-get replaced. The real downloads are one slow test."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from qpasses.data import texts
from qpasses.errors import InputError

TEXT = b"GNU Coding Standards, a fake.\n" * 50
MEMBER = "usr/share/doc/fake-doc/fake.text.gz"
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QPASSES_CACHE", str(cache))
    return cache


def build_deb(tmp_path: Path, text: bytes = TEXT) -> Path:
    """A real .deb of package fake-doc 1.0 holding MEMBER (gzipped `text`)."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: fake-doc\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: nobody <nobody@example.org>\nDescription: fake\n")
    (root / MEMBER).parent.mkdir(parents=True)
    (root / MEMBER).write_bytes(gzip.compress(text))
    deb = tmp_path / "fake-doc_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """Register a text "fake" served by a local .deb instead of apt-get; returns the download log."""
    deb = build_deb(tmp_path)
    downloads = []

    def download(package, version, dest):
        downloads.append(f"{package}={version}")
        return Path(shutil.copy(deb, dest))

    monkeypatch.setattr(texts, "apt_download", download)
    spec = texts.DebianText("fake-doc", "1.0", MEMBER, hashlib.sha256(TEXT).hexdigest())
    monkeypatch.setitem(texts.TEXTS, "fake", spec)
    return downloads


@needs_dpkg
def test_fetch_extract_check_and_cache(fake_apt, isolated_cache):
    path = texts.debian_text("fake")
    assert path == isolated_cache / "texts" / "fake-doc_1.0_fake.text"
    assert path.read_bytes() == TEXT
    assert texts.debian_text("fake") == path and fake_apt == ["fake-doc=1.0"]  # second call: cache


@needs_dpkg
def test_sha256_mismatch_of_the_download(fake_apt, monkeypatch, isolated_cache):
    monkeypatch.setitem(texts.TEXTS, "fake", texts.DebianText("fake-doc", "1.0", MEMBER, "0" * 64))
    with pytest.raises(InputError, match="fake.text.gz of fake-doc=1.0 has sha256 .* expected 0+: the package in "
                                         "the archive changed; nothing was cached"):
        texts.debian_text("fake")
    assert not list((isolated_cache / "texts").glob("fake-doc*"))


@needs_dpkg
def test_sha256_mismatch_of_the_cached_file(fake_apt):
    path = texts.debian_text("fake")
    path.write_bytes(TEXT + b"edited\n")
    with pytest.raises(InputError, match=f"cached text {path} has sha256 .*; deleted it: run again"):
        texts.debian_text("fake")
    assert not path.exists()
    assert texts.debian_text("fake").read_bytes() == TEXT and len(fake_apt) == 2


@needs_dpkg
def test_member_missing_from_the_package(tmp_path):
    with pytest.raises(InputError, match="has no file usr/share/other.txt.gz"):
        texts.extract_text(build_deb(tmp_path), "usr/share/other.txt.gz")
    with pytest.raises(InputError, match="dpkg-deb cannot read"):
        (tmp_path / "bad.deb").write_bytes(b"!<arch>\ngarbage")
        texts.extract_text(tmp_path / "bad.deb", MEMBER)


def test_unknown_text():
    with pytest.raises(InputError, match="unknown text 'test'; known: eval, calib"):
        texts.debian_text("test")


class FakeApt:
    """Stands in for `texts._run`: `apt-get download` fails until `apt-get update` has run
    (when `update_helps`), or always with `error`."""

    def __init__(self, update_helps: bool, error: str = "E: Can't find a matching version"):
        self.update_helps, self.error, self.commands, self.updated = update_helps, error, [], False

    def __call__(self, cmd, cwd):
        self.commands.append(" ".join(cmd[:2]))
        if cmd[1] == "update":
            self.updated = True
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if self.updated and self.update_helps:
            (Path(cwd) / "pkg_1.0_all.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 100, "", f"W: something\n{self.error} for pkg=1.0\n")


@pytest.fixture
def fake_run(monkeypatch):
    monkeypatch.setattr(texts, "_updated", False)

    def install(fake: FakeApt, root: bool) -> FakeApt:
        monkeypatch.setattr(texts, "_run", fake)
        monkeypatch.setattr(texts.os, "geteuid", lambda: 0 if root else 1000)
        monkeypatch.setattr(texts.shutil, "which", lambda name: "/usr/bin/" + name)
        return fake

    return install


def test_apt_update_once_as_root(fake_run, tmp_path):
    fake = fake_run(FakeApt(update_helps=True), root=True)
    assert texts.apt_download("pkg", "1.0", tmp_path).name == "pkg_1.0_all.deb"
    assert fake.commands == ["apt-get download", "apt-get update", "apt-get download"]


def test_unknown_version_not_root_says_run_apt_get_update(fake_run, tmp_path):
    fake = fake_run(FakeApt(update_helps=True), root=False)
    with pytest.raises(InputError, match=r"apt does not know pkg=1.0: run `apt-get update` as root"):
        texts.apt_download("pkg", "1.0", tmp_path)
    assert fake.commands == ["apt-get download"]


def test_unknown_version_after_update_says_which_version(fake_run, tmp_path):
    fake = fake_run(FakeApt(update_helps=False), root=True)
    with pytest.raises(InputError, match="pinned version is the one of Debian 12 bookworm"):
        texts.apt_download("pkg", "1.0", tmp_path)
    with pytest.raises(InputError, match="apt does not know"):  # no second update in the same process
        texts.apt_download("pkg", "1.0", tmp_path)
    assert fake.commands.count("apt-get update") == 1


def test_download_failure_names_apts_error(fake_run, tmp_path):
    fake_run(FakeApt(update_helps=False, error="E: Failed to fetch http://deb.example/pkg.deb  Could not resolve"),
             root=True)
    with pytest.raises(InputError, match="apt-get download pkg=1.0 failed: E: Failed to fetch"):
        texts.apt_download("pkg", "1.0", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("which, size", [("eval", 235_073), ("calib", 878_088)])
def test_real_debian_texts(which, size, tmp_path):
    """apt-get download of the pinned packages (needs the Debian archive); the sha256 is checked inside."""
    path = texts.debian_text(which)
    assert path.stat().st_size == size
