"""tests/runner_venv.py: a present venv is reused as is; a requirement pip cannot install is a
VenvUnavailable naming it, and leaves no venv behind."""

import pytest
from runner_venv import VenvUnavailable, runner_python, venv_path


def test_a_present_venv_is_reused_and_a_new_pin_makes_another(tmp_path, monkeypatch):
    monkeypatch.setenv("QPASSES_CACHE", str(tmp_path))
    python = venv_path("r", ["a==1"]) / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert runner_python("r", ["a==1"]) == python  # no venv made, no pip run
    assert venv_path("r", ["a==2"]) != venv_path("r", ["a==1"]) == venv_path("r", ["a==1"])
    assert venv_path("r", ["a==1"]).parent == tmp_path / "venvs"


def test_pip_failing_is_venv_unavailable_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QPASSES_CACHE", str(tmp_path))
    missing = str(tmp_path / "no-such-package-1.0-py3-none-any.whl")
    with pytest.raises(VenvUnavailable, match="pip cannot install .*no-such-package"):
        runner_python("broken", [missing])
    assert list((tmp_path / "venvs").iterdir()) == []
