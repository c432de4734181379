"""examples/cpp: the C++ program generates from a deployed folder the tokens `qpasses generate` does.

The program is built once per source version with the venv's cmake against the onnxruntime
library of this Python's wheel (cached under the qpasses cache, keyed by a hash of the sources and
that library's path), then run on a tiny-llama int4-w4a16 folder: greedy tokens equal the
decoder's, the `qpasses.ort` metadata reaches the session options, bad input is one line.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

import qpasses
from qpasses.evaluate.decoder import Decoder
from qpasses.runtime.ort import session

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("cpp_build", ROOT / "examples" / "cpp" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
PROMPT = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]
STEPS = 12


@pytest.fixture(scope="module")
def program() -> Path:
    """The built examples/cpp/generate (examples/cpp/build.py: compiled on first use, ~10 s)."""
    try:
        return build.build_generate()
    except build.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpp") / "tiny-llama-int4"
    qpasses.compile("tiny-llama", "int4-w4a16", out, no_eval=True, progress=False, threads=1, calib_windows=4)
    return out


def generate(program: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=120)


def expected_tokens(model: Path) -> list[int]:
    return Decoder(session(model, threads=1)).generate(PROMPT, STEPS)[0]


def test_generates_the_tokens_of_the_python_decoder(program, folder):
    proc = generate(program, "--threads", 1, folder, STEPS, *PROMPT)
    assert proc.returncode == 0, proc.stderr
    assert [int(t) for t in proc.stdout.split()] == expected_tokens(folder / "model.onnx")
    assert "tokens/s" in proc.stderr and f"library {folder / 'libqpasses_ops.so'}" in proc.stderr


def _with_settings(folder: Path, to: Path, value: str, key: str = "qpasses.ort") -> Path:
    """A copy of `folder` whose model.onnx carries `value` as its `key` metadata."""
    shutil.copytree(folder, to)
    model = onnx.load(str(to / "model.onnx"), load_external_data=False)
    entry = next(p for p in model.metadata_props if p.key == key)
    entry.value = value
    onnx.save(model, str(to / "model.onnx"))
    return to


def test_applies_the_session_settings_of_the_metadata(program, folder, tmp_path):
    settings = {"optimization": "basic", "config": {"session.qdq_matmulnbits_accuracy_level": 0}}
    copy = _with_settings(folder, tmp_path / "basic", json.dumps(settings))
    proc = generate(program, "--threads", 1, copy, STEPS, *PROMPT)
    assert proc.returncode == 0, proc.stderr
    assert "optimization basic, session.qdq_matmulnbits_accuracy_level=0" in proc.stderr
    assert [int(t) for t in proc.stdout.split()] == expected_tokens(copy / "model.onnx")


@pytest.mark.parametrize("case, expected", [
    ("no model", "model.onnx does not exist"),
    ("no library", "uses the qpasses custom ops but"),
    ("missing --ops", "custom-op library /nonexistent/libx.so does not exist"),
    ("bad metadata", "metadata qpasses.ort of"),
    ("too old an onnxruntime", "model.onnx needs onnxruntime >= 9.1, but this is 1."),
    ("bad steps", "STEPS must be an integer >= 1"),
])
def test_bad_input_is_one_line(program, folder, tmp_path, case, expected):
    target, extra = folder, []
    if case == "no model":
        target = tmp_path
    elif case == "no library":
        target = shutil.copytree(folder, tmp_path / "copy", ignore=shutil.ignore_patterns("libqpasses_ops.so"))
    elif case == "missing --ops":
        extra = ["--ops", "/nonexistent/libx.so"]
    elif case == "bad metadata":
        target = _with_settings(folder, tmp_path / "copy", '{"optimization": "fastest"}')
    elif case == "too old an onnxruntime":  # the folder's need (qpasses.onnxruntime_min) above the installed release
        target = _with_settings(folder, tmp_path / "copy", '{"version": "9.1"}', "qpasses.onnxruntime_min")
    steps = 0 if case == "bad steps" else STEPS
    proc = generate(program, *extra, target, steps, *PROMPT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
