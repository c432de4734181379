"""ONNX files written by other exporters (issue 24, foreign ONNX): attention masks holding -inf and
finfo.min are accepted, an lm_head with an anonymous weight name is still the `lm_head` the recipe
ignores, and the folder says what an ONNX input without a KV-cache graph produced."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from fx_helpers import LogitsOnly
from onnx import numpy_helper
from onnx_builders import FOREIGN_LINEARS, FOREIGN_LM_HEAD, foreign_lm

from qpasses.cli.main import main
from qpasses.export.folder_readme import NO_DECODER

TEXT = "The GNU coding standards were written by Richard Stallman and other GNU Project volunteers. " * 30


def write_foreign(folder: Path, nan_in: str | None = None) -> Path:
    """`foreign_lm` saved as folder/model.onnx with the byte tokenizer; `nan_in`: a weight given one NaN."""
    from qpasses.models.tiny import build_byte_tokenizer

    proto, _ = foreign_lm()
    if nan_in is not None:
        t = next(t for t in proto.graph.initializer if t.name == nan_in)
        w = numpy_helper.to_array(t).copy()
        w[1, 2] = np.nan
        t.CopyFrom(numpy_helper.from_array(w, nan_in))
    folder.mkdir(parents=True)
    onnx.save(proto, str(folder / "model.onnx"))
    build_byte_tokenizer().save_pretrained(str(folder))
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def foreign_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("foreign")
    (root / "eval.txt").write_text(TEXT)
    out = root / "int4"
    assert main(["run", "--model", str(write_foreign(root / "legacy")), "--recipe", "int4-w4a16-rtn",
                 "--out", str(out), "--eval-windows", "1", "--text", str(root / "eval.txt"), "--no-progress"]) == 0
    return out


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("qpasses: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_minus_inf_masks_are_accepted_and_the_anonymous_lm_head_stays_float(foreign_run):
    import json

    report = json.loads((foreign_run / "report.json").read_text())
    assert report["passes"][0]["rewrites"] == {"rtn.int4_sym_g128": 6}  # the six block linears, not the lm_head
    assert np.isfinite(report["ppl_fp"]) and np.isfinite(report["ppl_quant"])
    out = {t.name: t for t in onnx.load(str(foreign_run / "model.onnx")).graph.initializer}
    _, weights = foreign_lm()
    np.testing.assert_array_equal(numpy_helper.to_array(out[FOREIGN_LM_HEAD]), weights[FOREIGN_LM_HEAD])
    assert not set(FOREIGN_LINEARS) & set(out)  # each was replaced by its packed codes
    assert all(any(n in name and name.endswith(".qweight") for name in out) for n in FOREIGN_LINEARS)


def test_the_folder_readme_lists_only_the_files_the_folder_holds(foreign_run):
    readme = (foreign_run / "README.md").read_text()
    listed = [name for row in re.findall(r"^\| ([^|]+) \|", readme, re.M) if row not in ("file", "---")
              for name in row.split(", ")]
    assert "model.onnx" in listed and "KV-cache" not in readme.split("## Run it")[0]
    assert all((foreign_run / name).is_file() for name in listed), listed
    assert NO_DECODER in readme and "qpasses generate ." not in readme


def test_generate_says_the_folder_has_no_kv_cache_graph_and_why(foreign_run, capsys):
    assert main(["generate", str(foreign_run), "--prompt", "hi"]) == 2
    line = error_line(capsys)
    assert "has no KV cache" in line and "compiled from an ONNX file without one" in line
    assert "Hugging Face model or GGUF" in line


def test_nan_in_a_linear_weight_is_refused_naming_the_tensor(tmp_path, capsys):
    model = write_foreign(tmp_path / "nan", nan_in="onnx::MatMul_105")
    out = tmp_path / "out"
    assert main(["run", "--model", str(model), "--recipe", "int4-w4a16-rtn", "--out", str(out), "--no-eval",
                 "--no-progress"]) == 2
    assert "weight onnx::MatMul_105 holds 1 NaN/Inf" in error_line(capsys)
    assert not out.exists()


def test_a_legacy_torch_onnx_export_compiles_with_its_anonymous_lm_head_kept_float(tmp_path):
    """The TorchScript exporter (torch.onnx.export(dynamo=False)) on tiny-llama: its masks hold
    finfo.min, its tied lm_head weight is an anonymous `onnx::MatMul_N` transposed copy."""
    import json
    import warnings

    import torch

    from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama

    folder = tmp_path / "legacy"
    folder.mkdir()
    ids = torch.randint(3, 259, (1, 8), generator=torch.Generator().manual_seed(0))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsOnly(build_tiny_llama()), (ids, torch.ones_like(ids)), str(folder / "model.onnx"),
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17)
    build_byte_tokenizer().save_pretrained(str(folder))
    (tmp_path / "eval.txt").write_text(TEXT)
    out = tmp_path / "int4"
    assert main(["run", "--model", str(folder / "model.onnx"), "--recipe", "int4-w4a16-rtn", "--out", str(out),
                 "--eval-windows", "1", "--text", str(tmp_path / "eval.txt"), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passes"][0]["rewrites"] == {"rtn.int4_sym_g128": 14}  # 2 layers x 7, not the lm_head
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    [lm_head] = [n for n in graph.node if n.op_type == "MatMul" and "/lm_head/" in n.name]
    assert lm_head.input[1].startswith("onnx::MatMul_")  # still the float weight, under its anonymous name
    assert np.isfinite(report["ppl_quant"])
