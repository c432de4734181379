"""Shared fixtures: one tiny Llama exported to a deployed-style folder (the dynamo export costs
seconds, so it is built once), and stand-ins for the text and window helpers of `qpasses.data`."""

from __future__ import annotations

import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fx_helpers import LogitsOnly

from qpasses.errors import InputError


@dataclass
class Deployed:
    folder: Path  # model.onnx, model.onnx.data and the tokenizer files
    model: torch.nn.Module  # the Hugging Face model that was exported
    program: torch.export.ExportedProgram  # the torch.export program behind the ONNX file
    tokenizer: object


@pytest.fixture(scope="session")
def deployed(tmp_path_factory) -> Deployed:
    from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama

    folder = tmp_path_factory.mktemp("deployed")
    model = build_tiny_llama()
    ids = torch.randint(3, 259, (2, 16), generator=torch.Generator().manual_seed(0))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with warnings.catch_warnings():  # the exporter notes that both inputs share their dynamic axes
        warnings.simplefilter("ignore", UserWarning)
        onnx_program = torch.onnx.export(
            LogitsOnly(model).eval(), (ids, torch.ones_like(ids)), dynamo=True, opset_version=21,
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    onnx_program.save(str(folder / "model.onnx"), external_data=True)
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(str(folder))
    return Deployed(folder, model, onnx_program.exported_program, tokenizer)


def _tokenize_text(tokenizer, path):
    return torch.tensor(tokenizer(Path(path).read_text(encoding="utf-8")).input_ids, dtype=torch.long)


def _eval_windows(ids, n, length=512):
    if ids.numel() < n * length:
        raise InputError(f"the text has {ids.numel()} tokens, fewer than {n} windows of {length}")
    return ids[: n * length].view(n, length)


@pytest.fixture
def data_standins(monkeypatch, tmp_path):
    """Stand-ins for `qpasses.data.windows` and `qpasses.data.texts`; debian_text("eval")
    returns a small file in tmp_path. Yields that path."""
    default_text = tmp_path / "default-eval.txt"
    default_text.write_text(_sample_text(3000), encoding="utf-8")
    windows = types.ModuleType("qpasses.data.windows")
    windows.tokenize_text, windows.eval_windows = _tokenize_text, _eval_windows
    texts = types.ModuleType("qpasses.data.texts")
    texts.debian_text = lambda which: default_text if which == "eval" else pytest.fail(f"unexpected text {which}")
    monkeypatch.setitem(sys.modules, "qpasses.data.windows", windows)
    monkeypatch.setitem(sys.modules, "qpasses.data.texts", texts)
    return default_text


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A 2,100-byte text file: 4 windows of 512 tokens with the byte tokenizer, and some left over."""
    path = tmp_path / "small.txt"
    path.write_text(_sample_text(2100), encoding="utf-8")
    return path


def _sample_text(n_bytes: int) -> str:
    """ASCII prose of exactly n_bytes (one byte is one token with the tiny byte tokenizer)."""
    line = "Programs should follow the conventions of the system they run on, and say what they do.\n"
    return (line * (n_bytes // len(line) + 1))[:n_bytes]
