"""Bad attributes, shapes, dtypes and codes give an error naming the node and the problem, at session
creation when the problem is visible then, else at run; never a crash or a silent default."""

from __future__ import annotations

import numpy as np
import pytest
from op_session import run

from qpasses.errors import InputError
from qpasses.runtime.op_models import op_model, random_weights
from qpasses.runtime.ops import OpConfig

MX = OpConfig("MatMulMXFP4", K=64, N=32, act_bits=8)


def weights(cfg=MX):
    return random_weights(cfg, np.random.default_rng(0))


def model_with(cfg=MX, inputs=None, drop=(), a_shape=(1, 64), **attrs):
    model, _ = op_model(cfg, inputs or weights(cfg), a_shape, **attrs)
    node = model.graph.node[0]
    keep = [a for a in node.attribute if a.name not in drop]
    node.ClearField("attribute")
    node.attribute.extend(keep)
    return model


@pytest.mark.parametrize("model,message", [
    (model_with(drop=("K",)), "attribute 'K' is required"),
    (model_with(drop=("act_bits",)), "attribute 'act_bits' is required"),
    (model_with(act_bits=5), "act_bits must be 0 (float), 8 or 4, got 5"),
    (model_with(act_bits=4), "'act_format' (\"int\" or \"mxfp\") is required with act_bits 4"),
    (model_with(act_format="fp8"), "act_format must be \"int\" with act_bits 8"),
    (model_with(act_block=16), "act_block must be 32 or 0"),
    (model_with(hadamard_block=48), "hadamard_block must be 0 or a power of two dividing K=64, got 48"),
    (model_with(OpConfig("MatMulInt4", 64, 32, act_bits=8, block_size=32), drop=("block_size",)),
     "attribute 'block_size' is required"),
    (model_with(OpConfig("MatMulInt4", 64, 32, act_bits=8, block_size=32), block_size=48),
     "block_size must be 16, 32, 64, 128 or K"),
    (model_with(N=33), "input B has shape [32, 2, 16], expected [33, 2, 16]"),
    (model_with(inputs={**weights(), "E": np.full((32, 2), 255, np.uint8)}), "E8M0 code 255"),
    (model_with(inputs={**weights(), "L": np.zeros((64, 4), np.float32)}), "inputs L and R must be given together"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_node_fails_at_session_creation(model, message, tmp_path):
    with pytest.raises(InputError) as err:
        run(model, np.zeros((1, 64), np.float32), {}, tmp_path)
    assert "qpasses.MatMul" in str(err.value) and message in str(err.value)


def test_bad_run_inputs_fail_at_run(tmp_path):
    model, feeds = op_model(MX, weights(), ("m", "k"), constant=False)
    with pytest.raises(Exception, match="input A has shape \\[1, 48\\]; its last dimension must be K=64"):
        run(model, np.zeros((1, 48), np.float32), feeds, tmp_path)
    bad = {**feeds, "E": np.full_like(feeds["E"], 255)}
    with pytest.raises(Exception, match="E8M0 code 255"):
        run(model, np.zeros((1, 64), np.float32), bad, tmp_path)


def test_unknown_isa_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QPASSES_ISA", "sse9")
    with pytest.raises(InputError, match="QPASSES_ISA=sse9 is not one of scalar, avx2, avx512"):
        run(model_with(), np.zeros((1, 64), np.float32), {}, tmp_path)


def test_library_exports_only_its_entry_point():
    import subprocess

    from qpasses.runtime import library_path

    out = subprocess.run(["nm", "-D", "--defined-only", str(library_path())], capture_output=True, text=True)
    if out.returncode:
        pytest.skip("nm is not available")
    assert [line.split()[-1] for line in out.stdout.splitlines()] == ["RegisterCustomOps"]



@pytest.mark.slow
def test_an_older_onnxruntime_gets_one_line_naming_the_version_needed():
    """The library asks for ORT API 17: onnxruntime 1.16 (API 16, its PyPI wheel in a cached venv)
    refuses it at registration with one line naming both versions."""
    import subprocess
    import sys

    from qpasses.cache import cache_dir
    from qpasses.runtime import library_path

    env = cache_dir() / "venvs" / "onnxruntime-1.16.3"
    python = env / "bin" / "python"
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(env)], capture_output=True)
        if made.returncode == 0:
            made = subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime==1.16.3", "numpy<2"],
                                  capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot install onnxruntime 1.16.3: {str(made.stderr).strip().splitlines()[-1:]}")
    code = "import sys, onnxruntime as o; o.SessionOptions().register_custom_ops_library(sys.argv[1])"
    out = subprocess.run([str(python), "-c", code, str(library_path())], capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].endswith(
        "qpasses runtime: onnxruntime 1.16.3 is too old for libqpasses_ops.so; it needs onnxruntime >= 1.17 "
        "(ORT API 17)")
