"""runtime.min_ort: the oldest onnxruntime a model needs, from the rule table (the rows' versions
were measured with the PyPI wheels 1.16.3 .. 1.23.2; see the module docstring)."""

import json

import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_builders import tied_embedding_model

from qpasses.errors import InputError
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.base import Context
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.quantize_embeddings import QuantizeEmbeddings
from qpasses.runtime.min_ort import (
    METADATA_KEY,
    OP_RULES,
    check_installed,
    metadata_minimum,
    minimum_onnxruntime,
    minimum_onnxruntime_all,
    version_key,
)


def model(nodes, opsets=(("", 21), ("com.microsoft", 1)), ir_version=10, inits=()):
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    g = h.make_graph(nodes, "g", [x], [h.make_tensor_value_info("y", T.FLOAT, None)], list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)


def ms(op, inputs, **attrs):
    return h.make_node(op, inputs, ["y"], domain="com.microsoft", **attrs)


def gqa(n_inputs, **attrs):
    return ms("GroupQueryAttention", ["x"] * 7 + [""] * (n_inputs - 8) + ["x"] * (n_inputs > 7),
              num_heads=2, kv_num_heads=1, **attrs)


@pytest.mark.parametrize("nodes, version, why", [
    ([h.make_node("Add", ["x", "x"], ["y"])], "1.18", "IR version 10"),
    ([gqa(7)], "1.18", "GroupQueryAttention on CPU"),
    ([gqa(7, smooth_softmax=1)], "1.19", "smooth_softmax"),
    ([gqa(7, softcap=30.0)], "1.20", "softcap"),
    ([gqa(11)], "1.22", "input size 11 not in range"),
    ([gqa(11, softcap=30.0)], "1.22", "inputs 10-11"),
    ([ms("MatMulNBits", ["x", "b", "s"], K=4, N=4, block_size=32)], "1.18", "IR version 10"),  # 4-bit: 1.17
    ([ms("MatMulNBits", ["x", "b", "s"], K=4, N=4, bits=8, block_size=32, accuracy_level=4)], "1.22", "8-bit"),
    ([ms("MatMulNBits", ["x", "b", "s"], K=4, N=4, bits=8, block_size=32)], "1.23", "float activations"),
    ([ms("GatherBlockQuantized", ["q", "x", "s"], block_size=32, bits=4)], "1.23", "Unrecognized attribute: bits"),
    ([ms("RotaryEmbedding", ["x", "p", "c", "s"], num_heads=2), ms("SkipSimplifiedLayerNormalization",
                                                                   ["x", "x", "w"], epsilon=1e-5)], "1.18", "IR"),
    ([ms("FancyNewOp", ["x"])], "1.32", "com.microsoft.FancyNewOp is not in the table"),
])
def test_rows(nodes, version, why):
    got, reasons = minimum_onnxruntime(model(nodes))
    assert got == version
    assert any(why in r for r in reasons), reasons


def test_dtype_rows_gather_data_and_int4_dequantize():
    u8 = h.make_tensor("q", T.UINT8, [4, 2], [0] * 8)
    assert minimum_onnxruntime(model([ms("GatherBlockQuantized", ["q", "x", "s"], block_size=32)], inits=[u8]))[0] \
        == "1.22"
    u4 = h.make_tensor("q", T.UINT4, [4, 4], [0] * 16)
    assert minimum_onnxruntime(model([ms("GatherBlockQuantized", ["q", "x", "s"], block_size=32)], inits=[u4]))[0] \
        == "1.20"
    i4 = h.make_tensor("w", T.INT4, [4, 4], [0] * 16)
    dq = h.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=0, block_size=2)
    assert minimum_onnxruntime(model([dq], inits=[i4])) == ("1.19", ["int4/uint4 tensors (blocked DequantizeLinear) "
                                                                      "from 1.19"])


def test_model_level_rows_and_our_domain():
    add = h.make_node("Add", ["x", "x"], ["y"])
    assert minimum_onnxruntime(model([add], opsets=(("", 20),), ir_version=9))[0] == "1.17"
    assert minimum_onnxruntime(model([add], opsets=(("", 22),)))[0] == "1.21"
    assert minimum_onnxruntime(model([add], opsets=(("", 23),), ir_version=11))[0] == "1.23"
    ours = h.make_node("MatMulInt4", ["x", "b", "s"], ["y"], domain="qpasses")
    version, reasons = minimum_onnxruntime(model([ours], opsets=(("", 20), ("qpasses", 1)), ir_version=9))
    assert version == "1.17" and any("ORT API 17" in r for r in reasons)


def test_onnx_ir_model_and_several_graphs_agree_with_the_proto():
    proto = model([gqa(11)])
    assert minimum_onnxruntime(ir.serde.deserialize_model(proto)) == minimum_onnxruntime(proto)
    assert minimum_onnxruntime_all([model([gqa(7)]), proto])[0] == "1.22"


@pytest.mark.parametrize("fmt, version", [("int4", "1.22"), ("int8", "1.23")])
def test_lowered_embedding_writes_bits_only_for_int8(fmt, version):
    m, _ = tied_embedding_model(64, 96)
    m.ir_version = 10  # as the deployed graphs (the builder stamps onnx_ir's newest)
    stage, ctx = OnnxStage({"logits": m}), Context()
    QuantizeEmbeddings(format=fmt, block_size=32).run(stage, ctx)
    LowerLinears(target="matmulnbits").run(stage, ctx)
    gbq = next(n for n in m.graph if n.op_type == "GatherBlockQuantized")
    assert ("bits" in gbq.attributes) == (fmt == "int8")
    assert minimum_onnxruntime(m)[0] == version


def test_every_row_has_a_one_line_why():
    assert all(r.why and "\n" not in r.why and version_key(r.version) for r in OP_RULES)


def test_version_checks():
    assert version_key("1.22.1") == (1, 22, 1) and version_key("1.23.0+cpu") == (1, 23, 0)
    assert version_key("1.24.0.dev20250101") == (1, 24, 0)
    check_installed("1.22", "1.22.1", "x")
    check_installed(None, "1.0", "x")
    with pytest.raises(InputError, match=r"^m.onnx needs onnxruntime >= 1.23, but 1.22.1 is installed; pip install"):
        check_installed("1.23", "1.22.1", "m.onnx")
    assert metadata_minimum({METADATA_KEY: json.dumps({"version": "1.22", "reasons": []})}, "m") == "1.22"
    assert metadata_minimum({}, "m") is None
    with pytest.raises(InputError, match="names no version"):
        metadata_minimum({METADATA_KEY: json.dumps({"version": "new"})}, "m")
    with pytest.raises(InputError, match="not a JSON object"):
        metadata_minimum({METADATA_KEY: "1.22"}, "m")
