"""The package's layers (see [tool.importlinter] in pyproject.toml): the ONNX side loads without
torch, and the custom-op domain is one name in Python and C++."""

import re
import subprocess
import sys
from pathlib import Path

from qpasses.domain import DOMAIN, DOMAIN_VERSION

ROOT = Path(__file__).resolve().parents[1]


def test_the_onnx_side_imports_without_torch():
    code = ("import sys, qpasses, qpasses.rules, qpasses.runtime, qpasses.formats, qpasses.numerics, qpasses.domain; "
            "loaded = sorted(m for m in ('torch', 'qpasses.ir.fx_ops') if m in sys.modules); "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_runtime_library_registers_the_python_domain():
    source = (ROOT / "runtime" / "src" / "ops.cc").read_text()
    assert re.findall(r'CustomOpDomain>\("([^"]+)"\)', source) == [DOMAIN]
    assert f'of domain "{DOMAIN}" (version {DOMAIN_VERSION})' in source
