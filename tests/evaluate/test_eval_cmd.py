"""`qpasses eval`: arguments, the JSON and text outputs, and errors as InputError lines."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from qpasses.cli import eval_cmd
from qpasses.errors import InputError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=eval_cmd.DESCRIPTION)
    eval_cmd.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_defaults():
    args = parse("m.onnx")
    assert (args.windows, args.batch_size, args.text, args.tokenizer, args.threads, args.optimization) == \
        (80, 4, None, None, None, None)
    assert not args.json


def test_json_output(deployed, data_standins, small_text, capsys):
    model = deployed.folder / "model.onnx"
    assert eval_cmd.run(parse(model, "--text", small_text, "--windows", 3, "--batch-size", 2, "--threads", 1,
                              "--json", "--no-progress")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(model) and out["text"] == str(small_text)
    assert (out["tokens"], out["windows"], out["window_length"]) == (3 * 511, 3, 512)
    assert out["ppl"] > 1 and out["seconds"] >= 0
    assert out["ort"] == {"optimization": "all", "optimization_source": "default", "config": {}}


def test_text_line_folder_and_default_text(deployed, data_standins, capsys):
    args = parse(deployed.folder, "--windows", 2, "--optimization", "basic",
                 "--ort-config", "session.qdq_matmulnbits_accuracy_level=0", "--no-progress")
    assert eval_cmd.run(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("ppl ")
    assert "1,022 tokens" in line and data_standins.name in line
    assert "optimization=basic (argument)" in line and "session.qdq_matmulnbits_accuracy_level=0" in line


def test_separate_tokenizer_folder(deployed, data_standins, small_text, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(deployed.folder / name, bare / name)
    with pytest.raises(InputError, match="--tokenizer"):
        eval_cmd.run(parse(bare / "model.onnx", "--text", small_text, "--windows", 1, "--no-progress"))
    eval_cmd.run(parse(bare / "model.onnx", "--text", small_text, "--windows", 1, "--tokenizer", deployed.folder,
                       "--json", "--no-progress"))
    assert json.loads(capsys.readouterr().out)["tokenizer"] == str(deployed.folder)


@pytest.mark.parametrize("extra, match", [
    (["--windows", "0"], "--windows"),
    (["--batch-size", "0"], "--batch-size"),
    (["--ort-config", "no-equals-sign"], "KEY=VALUE"),
    (["--text", "absent.txt"], "absent.txt"),
    (["--windows", "9"], "fewer than 9 windows"),  # the stand-in's message: the text is too short
])
def test_bad_arguments(deployed, data_standins, small_text, extra, match):
    args = ["--text", small_text] if "--text" not in extra else []
    with pytest.raises(InputError, match=match):
        eval_cmd.run(parse(deployed.folder / "model.onnx", *args, *extra, "--no-progress"))


def test_bad_model_paths(tmp_path, data_standins, small_text):
    with pytest.raises(InputError, match="does not exist"):
        eval_cmd.run(parse(tmp_path / "absent.onnx", "--text", small_text))
    with pytest.raises(InputError, match="does not exist"):
        eval_cmd.run(parse(tmp_path, "--text", small_text))  # a folder without model.onnx
    (tmp_path / "model.onnx").write_bytes(b"\xff" * 40)
    with pytest.raises(InputError, match="not a readable ONNX file"):
        eval_cmd.run(parse(tmp_path / "model.onnx", "--text", small_text))
