"""Fixtures for the model sources: an isolated cache, and small Hugging Face folders and ONNX files
written from code, which tests copy and then damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty `$QPASSES_CACHE`."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QPASSES_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_folder_master(tmp_path_factory) -> Path:
    """`tiny-llama` saved with save_pretrained, with its byte tokenizer. Copy before changing it."""
    from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-hf") / "tiny-hf"
    build_tiny_llama().save_pretrained(str(folder))
    build_byte_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture
def tiny_folder(tiny_folder_master, tmp_path) -> Path:
    """A private copy of the saved tiny model, free to damage."""
    return Path(shutil.copytree(tiny_folder_master, tmp_path / "tiny-hf"))


@pytest.fixture
def bert_folder(tmp_path) -> Path:
    """A tiny BERT-style encoder (not a causal LM) with the byte tokenizer."""
    from qpasses.models.tiny import save_tiny_bert

    return save_tiny_bert(tmp_path / "tiny-bert")


@pytest.fixture
def make_onnx():
    """The `write_onnx` builder, for tests that need an .onnx file."""
    return write_onnx


def write_onnx(folder: Path, weight: np.ndarray | None = None, external: bool = True,
               tokenizer: bool = True) -> Path:
    """`folder/model.onnx`: y = x @ W (W is 4x4), W in `model.onnx.data` when `external`."""
    folder.mkdir(parents=True, exist_ok=True)
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16 if weight is None else weight
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    if tokenizer:
        from qpasses.models.tiny import build_byte_tokenizer

        build_byte_tokenizer().save_pretrained(str(folder))
    return path
