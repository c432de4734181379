"""A cached virtualenv for a runner whose pins conflict with ours (optimum-onnx wants
transformers < 4.58, we run 5.x): made once with `python -m venv` + pip, reused afterwards.

The folder is `$QPASSES_CACHE/venvs/<name>-<hash>` (default `~/.cache/qpasses/venvs`), the hash
covering the requirements and this Python's version, so a changed pin makes a new venv and never
patches an old one. It is built under a temporary name and renamed into place when pip succeeded:
a present folder is a complete venv. Independent of qpasses: plain standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path


class VenvUnavailable(Exception):
    """pip could not install the requirements (no network, no wheel for this platform...)."""


def venv_root() -> Path:
    base = os.environ.get("QPASSES_CACHE") or Path.home() / ".cache" / "qpasses"
    return Path(base).expanduser() / "venvs"


def venv_path(name: str, requirements: list[str]) -> Path:
    key = "\n".join([sys.version.split()[0], *sorted(requirements)])
    return venv_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def runner_python(name: str, requirements: list[str], timeout: float = 1800) -> Path:
    """The python of a venv holding `requirements` (pip specifiers, pinned), made if missing;
    `VenvUnavailable` with pip's last lines when pip cannot install them."""
    folder = venv_path(name, requirements)
    python = folder / "bin" / "python"
    if python.is_file():
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        subprocess.run([_base_python(), "-m", "venv", str(tmp)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", *requirements],
                             capture_output=True, text=True, timeout=timeout)
        if pip.returncode != 0:
            tail = " | ".join((pip.stderr or pip.stdout).strip().splitlines()[-3:])
            raise VenvUnavailable(f"pip cannot install {' '.join(requirements)}: {tail}")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same venv first: use theirs
            if not python.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return python


def _base_python() -> str:
    """The interpreter a venv is made from: the base one, not the venv running the tests
    (a venv of a venv would see our site-packages through nothing, but its `home` would point
    at our venv's bin, which is fragile when that venv is rebuilt)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base) if base.is_file() else sys.executable


# optimum-onnx's ORTModelForCausalLM (tests/test_optimum.py, bench/runners.py) --------------------

RUNNERS = Path(__file__).resolve().parent / "runners"


def _ours(package: str) -> str:
    """Our installed version of `package` without a local tag (torch 2.13.0+cpu -> 2.13.0: pip
    takes the CPU wheel on this machine's disk for ==2.13.0)."""
    import importlib.metadata

    return importlib.metadata.version(package).split("+")[0]


def optimum_requirements() -> list[str]:
    """optimum-onnx with the transformers it accepts, and torch (transformers' generate needs it);
    onnxruntime, onnx, torch and numpy as ours, so our library meets the onnxruntime it was built for."""
    return ["optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "tokenizers==0.22.2",
            "huggingface-hub==0.36.2", f"onnxruntime=={_ours('onnxruntime')}", f"onnx=={_ours('onnx')}",
            f"torch=={_ours('torch')}", f"numpy=={_ours('numpy')}"]


def run_runner(python: Path, script: str, *args: str, timeout: float = 900) -> dict:
    """Run tests/runners/`script` with `python`; its last stdout line is JSON."""
    done = subprocess.run([str(python), str(RUNNERS / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_optimum(folder: Path, ids: list[int], new: int, threads: int = 1, library: Path | None = None,
                config: dict | None = None) -> dict:
    """optimum's greedy `generate` of up to `new` tokens after `ids` from the unmodified folder, in the
    optimum venv: {"tokens", "tokens_per_s" (new tokens after the first, over the time after the
    first), "transformers"}. `library`: default the folder's copy of libqpasses_ops.so; `config`:
    session config entries (the folder README's). `VenvUnavailable` when pip cannot install optimum."""
    folder = Path(folder)
    if library is None and (folder / "libqpasses_ops.so").is_file():
        library = folder / "libqpasses_ops.so"
    python = runner_python("optimum-onnx", optimum_requirements())
    request = {"prompt": list(ids), "steps": new, "threads": threads, "config": config or {}}
    return run_runner(python, "optimum_generate.py", str(folder), str(library or ""), json.dumps(request))
