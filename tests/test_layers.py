"""The package's layers (see [tool.importlinter] in pyproject.toml): the import contracts hold, the
ONNX side loads without torch, and the custom-op domain is one name in Python and C++."""

import os
import re
import subprocess
import sys
import sysconfig
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


def test_the_import_contracts_hold():
    """lint-imports on [tool.importlinter], in a Python without site (-S): the editable install
    also puts the repository root on qpasses.__path__, where bench/ and tests/ would pass for
    parts of qpasses; here qpasses is the source folder alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
