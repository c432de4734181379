"""Byte layouts: nibble order, MatMulNBits (checked against onnxruntime), MXFP4 B/E."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qpasses.formats import (
    QuantizedWeight,
    WeightFormat,
    dequantize_weight,
    pack_matmulnbits,
    pack_mxfp4,
    pack_nibbles,
    quantize_weight,
    unpack_matmulnbits,
    unpack_mxfp4,
    unpack_nibbles,
)

F32 = np.float32


def test_nibble_order_literal_bytes():
    assert pack_nibbles(np.array([1, 2], np.uint8)).tolist() == [0x21]
    assert pack_nibbles(np.array([[15, 0, 3, 12, 7]], np.uint8)).tolist() == [[0x0F, 0xC3, 0x07]]
    assert unpack_nibbles(np.array([0x21, 0xF0], np.uint8), 4).tolist() == [1, 2, 0, 15]
    with pytest.raises(ValueError):
        pack_nibbles(np.array([16], np.uint8))


def test_matmulnbits_literal_layout():
    fmt = WeightFormat("int4", 16, symmetric=False)
    codes = np.arange(48, dtype=np.uint8).reshape(1, 3, 16) % 16
    q = QuantizedWeight(fmt, (1, 40), codes, np.array([[1, 2, 3]], F32), np.array([[1, 2, 3]], np.uint8))
    p = pack_matmulnbits(q)
    assert p["B"].shape == (1, 3, 8) and p["B"][0, 0, :2].tolist() == [0x10, 0x32]
    assert p["scales"].tolist() == [1, 2, 3] and p["scales"].dtype == F32
    assert p["zero_points"].tolist() == [[0x21, 0x03]]  # block 2i low nibble, odd count padded
    back = unpack_matmulnbits(p, fmt, (1, 40))
    assert np.array_equal(back.codes, codes) and np.array_equal(back.zero_points, q.zero_points)


def test_mxfp4_literal_layout_and_round_trip():
    w = np.zeros((2, 70), F32)
    w[0, 0], w[0, 1], w[0, 33] = 0.5, 1.0, -6.0  # block 0 amax 1: X = 2^-2; block 1 amax 6: X = 1
    q = quantize_weight(w, WeightFormat("mxfp4", 32))
    b, e = pack_mxfp4(q)
    assert b.shape == (2, 3, 16) and e.shape == (2, 3) and b.dtype == e.dtype == np.uint8
    assert b[0, 0, 0] == (q.codes[0, 0, 0] | q.codes[0, 0, 1] << 4) == 0x64  # 0.5 -> 4 (2.0 * 2^-2), 1 -> 6 (4.0)
    assert b[0, 1, 0] == 0xF0 and e[0, 1] == 127  # element 33 = block 1, j = 1: high nibble, -6 * 2^0 = code 15
    back = unpack_mxfp4(b, e, (2, 70))
    assert np.array_equal(back.codes, q.codes) and np.array_equal(dequantize_weight(back), dequantize_weight(q))
    assert unpack_mxfp4(b, e, (2, 70), "even").fmt.scale_rule == "even"


def test_matmulnbits_rejects_what_it_cannot_take():
    w = np.ones((2, 576), F32)
    with pytest.raises(ValueError):
        pack_matmulnbits(quantize_weight(w, WeightFormat("mxfp4", 32)))
    with pytest.raises(ValueError):
        pack_matmulnbits(quantize_weight(w, WeightFormat("int4", 0)))  # per channel, block 576
    with pytest.raises(ValueError):
        unpack_matmulnbits({"B": None, "scales": None}, WeightFormat("int4", 0), (2, 576))


def run_matmulnbits(x, packed, n, k, bits, block):
    """One com.microsoft.MatMulNBits node on onnxruntime CPU (fp32 accuracy level)."""
    inits = [numpy_helper.from_array(packed["B"], "B"), numpy_helper.from_array(packed["scales"], "scales")]
    names = ["A", "B", "scales"]
    if packed["zero_points"] is not None:
        inits.append(numpy_helper.from_array(packed["zero_points"], "zp"))
        names.append("zp")
    node = helper.make_node("MatMulNBits", names, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, ir_version=10,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"A": x})[0]


@pytest.mark.parametrize("fmt, k", [
    (WeightFormat("int4", 32), 576),
    (WeightFormat("int4", 128), 576),  # ragged: 4 full blocks + 64
    (WeightFormat("int4", 128, symmetric=False), 576),  # 5 blocks: odd count of packed zero points
    (WeightFormat("int4", 32, symmetric=False), 256),
    (WeightFormat("int4", 0), 256),  # per channel, block 256
    (WeightFormat("int8", 32), 576),
    (WeightFormat("int8", 64, symmetric=False), 320),
], ids=lambda v: str(v) if isinstance(v, int) else f"{v.kind}-{v.block_size}-{'sym' if v.symmetric else 'asym'}")
def test_matmulnbits_matches_onnxruntime(fmt, k):
    rng = np.random.default_rng(k + fmt.block_size)
    n = 48
    w = (rng.standard_normal((n, k)) * 0.1 + rng.uniform(-0.05, 0.05, (n, 1))).astype(F32)
    x = rng.standard_normal((5, k)).astype(F32)
    q = quantize_weight(w, fmt)
    packed = pack_matmulnbits(q)
    nb = q.nblocks
    assert packed["B"].shape == (n, nb, q.block * fmt.bits // 8) and packed["scales"].shape == (n * nb,)
    assert (packed["zero_points"] is None) == fmt.symmetric
    if not fmt.symmetric:
        assert packed["zero_points"].shape == (n, -(-nb * fmt.bits // 8))
    y = run_matmulnbits(x, packed, n, k, fmt.bits, q.block)
    ref = x @ dequantize_weight(q).T
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    back = unpack_matmulnbits(packed, fmt, (n, k))
    assert np.array_equal(back.codes, q.codes) and np.array_equal(back.scales, q.scales)
    assert np.array_equal(back.zero_points, q.zero_points)
