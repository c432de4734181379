"""The repository passes `ruff check` (style, import order, no private onnxscript imports)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, ("ruff check found problems (fix them, or `ruff check --fix`):\n"
                                  f"{done.stdout}{done.stderr}")
