"""`load_model` on .onnx files: a good one, and every way its file or external data can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qpasses.errors import InputError
from qpasses.load import load_model


def set_location(path: Path, location: str) -> None:
    """Point every external tensor of the .onnx file at `location`, rewriting only the proto."""
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


def test_onnx_with_external_data(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "deployed")
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    loaded = load_model(str(path))
    assert (loaded.kind, loaded.model, loaded.onnx_path) == ("onnx", None, path)
    assert loaded.name == "deployed"  # a generic "model.onnx" is named after its folder
    assert set(loaded.source["files"]) == {"model.onnx", "model.onnx.data"}
    assert len(loaded.source["sha256"]) == 64
    assert loaded.tokenizer.decode(loaded.tokenizer("hi", add_special_tokens=False).input_ids) == "hi"
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


def test_onnx_named_after_its_stem(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m", external=False)
    renamed = path.rename(path.with_name("tiny-w4.onnx"))
    loaded = load_model(str(renamed))
    assert loaded.name == "tiny-w4" and loaded.source["sha256"] == loaded.source["files"]["tiny-w4.onnx"]


def test_onnx_tokenizer_from_argument(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m", tokenizer=False)
    with pytest.raises(InputError, match=r"no tokenizer next to .*model.onnx; pass --tokenizer DIR"):
        load_model(str(path))
    tok_dir = tmp_path / "tok"
    make_onnx(tok_dir)  # any folder holding tokenizer files
    assert load_model(str(path), tokenizer=str(tok_dir)).source["tokenizer"] == str(tok_dir.resolve())


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_onnx(tmp_path, make_onnx, damage):
    path = make_onnx(tmp_path / "m", external=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\xff" * 40)
    with pytest.raises(InputError, match="corrupt or truncated|not a valid ONNX model"):
        load_model(str(path))


def test_missing_external_data_file(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m")
    (path.parent / "model.onnx.data").unlink()
    with pytest.raises(InputError, match=r"external data file model.onnx.data \(tensor W\) is missing"):
        load_model(str(path))


@pytest.mark.parametrize("location", ["../x.data", "sub/../../x.data", "/tmp/x.data"])
def test_external_data_outside_the_folder(tmp_path, make_onnx, location):
    path = make_onnx(tmp_path / "m")
    (tmp_path / "x.data").write_bytes((path.parent / "model.onnx.data").read_bytes())
    set_location(path, location)
    with pytest.raises(InputError, match="outside the model's folder"):
        load_model(str(path))


def test_external_data_linked_from_outside_the_folder(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m")
    data = path.parent / "model.onnx.data"
    data.rename(tmp_path / "elsewhere.data")
    data.symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(InputError, match="is a link to .*elsewhere.data, outside the model's folder"):
        load_model(str(path))


def test_external_data_in_a_subfolder_is_fine(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m")
    (path.parent / "weights").mkdir()
    (path.parent / "model.onnx.data").rename(path.parent / "weights" / "w.data")
    set_location(path, "weights/w.data")
    assert set(load_model(str(path)).source["files"]) == {"model.onnx", "weights/w.data"}


def test_truncated_external_data(tmp_path, make_onnx):
    path = make_onnx(tmp_path / "m")
    data = path.parent / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(InputError, match="model.onnx.data is truncated"):
        load_model(str(path))


@pytest.mark.parametrize("external", [True, False])
def test_non_finite_onnx_weight_is_named(tmp_path, make_onnx, external):
    w = np.ones((4, 4), np.float32)
    w[1, 2] = np.nan
    path = make_onnx(tmp_path / "m", weight=w, external=external)
    with pytest.raises(InputError, match="weight W holds 1 NaN/Inf"):
        load_model(str(path))


def test_minus_inf_outside_linear_weights_is_accepted(tmp_path):
    """Attention masks of the legacy torch.onnx.export and optimum hold -inf and finfo.min, in
    Constant nodes and initializers: only linear weights are checked."""
    from onnx import TensorProto, helper, numpy_helper

    from qpasses.models.tiny import build_byte_tokenizer

    mask = np.array([[0.0, -np.inf], [-3.4e38, np.inf]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["m"], value=numpy_helper.from_array(mask)),
         helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "m"], ["y0"]),
         helper.make_node("Add", ["y0", "bias_mask"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
                     numpy_helper.from_array(mask, "bias_mask")])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    build_byte_tokenizer().save_pretrained(str(path.parent))
    assert load_model(str(path)).kind == "onnx"


@pytest.mark.parametrize("node_name, named", [("", r"'w' \(the output of a Constant node without a name\)"),
                                              ("/lm/Constant_7", r"Constant node '/lm/Constant_7' \(output 'w'\)")])
@pytest.mark.parametrize("transposed", [False, True])
def test_non_finite_constant_node_weight_is_named_by_node_and_output(tmp_path, node_name, named, transposed):
    from onnx import TensorProto, helper, numpy_helper

    from qpasses.models.tiny import build_byte_tokenizer

    w = np.ones((2, 2), np.float32)
    w[0, 1] = np.inf
    nodes = [helper.make_node("Constant", [], ["w"], name=node_name, value=numpy_helper.from_array(w))]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["x", "wt" if transposed else "w"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    build_byte_tokenizer().save_pretrained(str(path.parent))
    with pytest.raises(InputError, match=f"weight {named} holds 1 NaN/Inf"):
        load_model(str(path))
