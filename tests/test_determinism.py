"""The same recipe, model, seed and thread count give byte-identical deployed files on two runs."""

import json

import pytest

from qpasses.cli.main import main

TIMING_KEYS = {"seconds", "quantize_seconds", "total_seconds", "peak_rss_bytes", "date", "profile"}


def untimed(x):
    """x without its timings and memory readings (they are measurements, not outputs)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


@pytest.mark.parametrize("recipe", ["int4-w4a16", "mxfp4-w4a4"])  # GPTQ/PiSO; rotations, trained scales
def test_two_runs_write_the_same_bytes(recipe, tmp_path):
    outs = [tmp_path / f"run{i}" for i in range(2)]
    for out in outs:
        assert main(["run", "--model", "tiny-llama", "--recipe", recipe, "--no-eval", "--threads", "1",
                     "--calib-windows", "8", "--no-progress", "--out", str(out)]) == 0
    a, b = outs
    for name in ("model.onnx", "model.onnx.data", "README.md", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ("manifest.json", "report.json"):
        assert untimed(json.loads((a / name).read_text())) == untimed(json.loads((b / name).read_text())), name
