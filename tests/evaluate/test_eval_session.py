"""onnxruntime sessions: optimization/config precedence, the W4A16 trap, and unusable files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpasses.errors import InputError
from qpasses.runtime.ort import (
    METADATA_KEY,
    ORT_OPT_LEVELS,
    QDQ_MATMULNBITS_ACCURACY_LEVEL,
    ort_session,
    ort_settings,
)

K, N, BLOCK = 256, 64, 32
W4A16_TOL, W4A8_MIN = 1e-4, 1e-3  # fp32 rounding vs int8 activations, on outputs of size ~1


def dq_matmul_model(path, metadata: dict | None = None):
    """y = x @ DequantizeLinear(int4 W [K, N], blocks of 32 along K) (opset 21); returns the
    exact reference weight. `metadata` becomes the model's `qpasses.ort` entry."""
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(K, N))
    scale = (rng.random((K // BLOCK, N)) * 0.05 + 0.01).astype(np.float32)
    weight = q * np.repeat(scale.astype(np.float64), BLOCK, axis=0)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "scale"], ["w"], axis=0, block_size=BLOCK),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "dq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
        [helper.make_tensor("wq", TensorProto.INT4, [K, N], q.flatten().tolist()),
         numpy_helper.from_array(scale, "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    if metadata is not None:
        helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(model, str(path))
    return weight


def max_error(session, weight) -> float:
    x = np.random.default_rng(1).standard_normal((8, K)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    return float(np.abs(y - x.astype(np.float64) @ weight).max())


def test_default_is_all_and_fuses_to_w4a8(tmp_path):
    weight = dq_matmul_model(tmp_path / "m.onnx")
    settings = ort_settings(tmp_path / "m.onnx")
    assert (settings.optimization, settings.config, settings.source) == ("all", {}, "default")
    assert max_error(ort_session(tmp_path / "m.onnx", threads=1), weight) > W4A8_MIN


@pytest.mark.parametrize("level, exact", [("disable", True), ("basic", True), ("extended", False), ("all", False)])
def test_levels_that_fuse_dq_matmul(tmp_path, level, exact):
    weight = dq_matmul_model(tmp_path / "m.onnx")
    err = max_error(ort_session(tmp_path / "m.onnx", threads=1, optimization=level), weight)
    assert (err < W4A16_TOL) if exact else (err > W4A8_MIN)


@pytest.mark.parametrize("accuracy, exact", [("0", True), ("1", True), ("4", False)])
def test_accuracy_level_key_keeps_w4a16_exact(tmp_path, accuracy, exact):
    weight = dq_matmul_model(tmp_path / "m.onnx")
    session = ort_session(tmp_path / "m.onnx", threads=1, optimization="all",
                          extra_config={QDQ_MATMULNBITS_ACCURACY_LEVEL: accuracy})
    err = max_error(session, weight)
    assert (err < W4A16_TOL) if exact else (err > W4A8_MIN)
    assert session.get_session_options().get_session_config_entry(QDQ_MATMULNBITS_ACCURACY_LEVEL) == accuracy


def test_metadata_overrides_the_default(tmp_path):
    path = tmp_path / "m.onnx"
    weight = dq_matmul_model(path, {"optimization": "all", "config": {QDQ_MATMULNBITS_ACCURACY_LEVEL: "0"}})
    settings = ort_settings(path)
    assert (settings.optimization, settings.source) == ("all", "metadata")
    assert settings.config == {QDQ_MATMULNBITS_ACCURACY_LEVEL: "0"}
    assert QDQ_MATMULNBITS_ACCURACY_LEVEL in settings.describe()
    assert max_error(ort_session(path, threads=1), weight) < W4A16_TOL


def test_arguments_override_the_metadata(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    weight = dq_matmul_model(path, {"optimization": "basic", "config": {QDQ_MATMULNBITS_ACCURACY_LEVEL: "0",
                                                                        "session.other": "1"}})
    assert max_error(ort_session(path, threads=1), weight) < W4A16_TOL  # basic: no fusion
    session = ort_session(path, threads=1, optimization="all", extra_config={QDQ_MATMULNBITS_ACCURACY_LEVEL: "4"})
    assert max_error(session, weight) > W4A8_MIN
    options = session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.get_session_config_entry("session.other") == "1"  # merged key by key
    assert ort_settings(path, optimization="all").source == "argument"


@pytest.mark.parametrize("meta", ["not json", json.dumps([1]), json.dumps({"optimization": "max"}),
                                  json.dumps({"config": {"k": 1.5}}), json.dumps({"threads": 2})])
def test_bad_metadata(tmp_path, meta):
    path = tmp_path / "m.onnx"
    dq_matmul_model(path)
    model = onnx.load(str(path))
    helper.set_model_props(model, {METADATA_KEY: meta})
    onnx.save(model, str(path))
    with pytest.raises(InputError, match=METADATA_KEY):
        ort_session(path)


def test_unknown_level_and_threads(tmp_path):
    dq_matmul_model(tmp_path / "m.onnx")
    assert ORT_OPT_LEVELS == {"disable", "basic", "extended", "all"}
    with pytest.raises(InputError, match="optimization level"):
        ort_session(tmp_path / "m.onnx", optimization="fast")
    with pytest.raises(InputError, match="threads"):
        ort_session(tmp_path / "m.onnx", threads=0)
    with pytest.raises(InputError, match="library"):
        ort_session(tmp_path / "m.onnx", register_libraries=[str(tmp_path / "libnothing.so")])


def test_missing_and_corrupt_files(tmp_path, deployed):
    with pytest.raises(InputError, match="does not exist"):
        ort_session(tmp_path / "absent.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\xfe not a protobuf \x00" * 7)
    with pytest.raises(InputError, match="garbage.onnx"):
        ort_session(tmp_path / "garbage.onnx")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(deployed.folder / "model.onnx", alone / "model.onnx")
    with pytest.raises(InputError, match="missing"):
        ort_session(alone / "model.onnx")
    data = (deployed.folder / "model.onnx.data").read_bytes()
    (alone / "model.onnx.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        ort_session(alone / "model.onnx")
    (alone / "model.onnx.data").unlink()
    (alone / "model.onnx.data").symlink_to(deployed.folder / "model.onnx.data")  # whole, but outside
    with pytest.raises(InputError, match="outside the model's folder"):
        ort_session(alone / "model.onnx")


def test_onnxruntime_rejection_is_one_line(tmp_path):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "m.onnx"))
    with pytest.raises(InputError, match="onnxruntime cannot load") as info:
        ort_session(tmp_path / "m.onnx")
    assert "\n" not in str(info.value)


def test_a_model_needing_a_newer_onnxruntime_is_refused_in_one_line(tmp_path):
    import onnxruntime as ort

    from qpasses.runtime import session
    from qpasses.runtime.min_ort import METADATA_KEY as MIN_KEY

    path = tmp_path / "m.onnx"
    dq_matmul_model(path)
    model = onnx.load(str(path))
    for need, ok in (("1.17", True), (ort.__version__, True), ("99.0", False)):
        helper.set_model_props(model, {MIN_KEY: json.dumps({"version": need, "reasons": ["why"]})})
        onnx.save(model, str(path))
        if ok:
            ort_session(path, threads=1)
            continue
        for make in (ort_session, session):
            with pytest.raises(InputError, match=rf"^{path} needs onnxruntime >= 99.0, but {ort.__version__} is "
                                                 r"installed; pip install 'onnxruntime>=99.0'$"):
                make(path)
