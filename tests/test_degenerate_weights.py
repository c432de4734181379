"""Degenerate but legal weights (all-zero rows, an all-zero linear, a zero embedding row) go through
every kind of composed recipe and deploy what stage A computed; NaN weights are named."""

import json

import pytest
import torch

from qpasses.cli.main import main
from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama


@pytest.fixture(scope="module")
def zeros_folder(tmp_path_factory):
    model = build_tiny_llama()
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.q_proj.weight[:5] = 0  # rows
        layer.mlp.up_proj.weight[:, :32] = 0  # a whole weight block of every row
        model.model.layers[1].self_attn.v_proj.weight.zero_()  # a whole linear
        model.model.embed_tokens.weight[7] = 0  # a token (the tied lm_head row too)
    folder = tmp_path_factory.mktemp("zeros") / "tiny-zeros"
    model.save_pretrained(str(folder))
    build_byte_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("recipe", ["int4-w4a16", "mxfp4-w4a4"])
def test_zero_rows_and_linears_quantize_and_deploy(zeros_folder, recipe, tmp_path):
    out = tmp_path / recipe
    assert main(["run", "--model", str(zeros_folder), "--recipe", recipe, "--eval-windows", "1", "--calib-windows", "8",
                 "--no-layer-error", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["ppl_quant"] == pytest.approx(r["ppl_stage_a"], rel=2e-3)


def test_nan_weights_are_named_before_anything_runs(zeros_folder, tmp_path, capsys):
    model = build_tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 4] = float("nan")
    folder = tmp_path / "tiny-nan"
    model.save_pretrained(str(folder))
    build_byte_tokenizer().save_pretrained(str(folder))
    assert main(["run", "--model", str(folder), "--no-eval", "--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.down_proj" in err and "NaN" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
