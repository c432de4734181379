"""Each lowering rule, checked numerically: the lowered graph computes what the snapped float
graph computed (the identity each rule states), in onnxruntime."""

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from onnx_builders import linear_model, run_ort
from onnxscript.rewriter import RewriteRuleSet

from qpasses.domain import DOMAIN, QUANT_ACT
from qpasses.errors import PostconditionError
from qpasses.formats import dequantize_weight, fake_quant_activation_np
from qpasses.formats.spec import ActFormat, WeightFormat
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.base import Context
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.quantize_activations import QuantizeActivations
from qpasses.passes.quantize_weights import QuantizeWeights
from qpasses.rules.expand_quant_act import expand_rules
from qpasses.rules.lower_int import matmulnbits_rules

RNG = np.random.default_rng(1)


def ops(model):
    return Counter(n.op_type for n in model.graph)


LAYOUTS = ("nk", "kn", "gemm", "gemm_bias")


def quantized_stage(k, n, wsettings, layouts=LAYOUTS):
    model, weights = linear_model(k, n, layouts)
    stage, ctx = OnnxStage({"logits": model}), Context()
    counts = QuantizeWeights(**wsettings).run(stage, ctx)
    assert sum(counts.values()) == len(layouts)
    return model, stage, ctx


CASES = [
    ({"format": "int4", "block_size": 32}, "matmulnbits", "MatMulNBits"),
    ({"format": "int4", "block_size": 128}, "matmulnbits", "MatMulNBits"),  # K = 96 + ragged... see k below
    ({"format": "int4", "block_size": 32, "symmetric": False}, "matmulnbits", "MatMulNBits"),
    ({"format": "int8", "block_size": 32}, "matmulnbits", "MatMulNBits"),
    ({"format": "int4", "block_size": 32}, "qdq", "DequantizeLinear"),
    ({"format": "int4", "block_size": 64, "symmetric": False}, "qdq", "DequantizeLinear"),
    ({"format": "int4", "block_size": 0}, "qdq", "DequantizeLinear"),
    ({"format": "mxfp4"}, "matmulnbits", "Gather"),
    ({"format": "int4", "block_size": 32}, "qpasses", "MatMulInt4"),
    ({"format": "int4", "block_size": 128}, "qpasses", "MatMulInt4"),
    ({"format": "int4", "block_size": 32, "symmetric": False}, "qpasses", "MatMulInt4"),
    ({"format": "int4", "block_size": 0}, "qpasses", "MatMulInt4"),
    ({"format": "int8", "block_size": 32}, "qpasses", "MatMulNBits"),  # our ops are 4-bit: stock fallback
    ({"format": "mxfp4"}, "qpasses", "MatMulMXFP4"),
]


@pytest.mark.parametrize("wsettings, target, op", CASES)
@pytest.mark.parametrize("k", [192, 160])  # 160: not a multiple of 64 or 128 (ragged last block)
def test_weight_lowering_preserves_the_snapped_graph(wsettings, target, op, k):
    model, stage, ctx = quantized_stage(k, 48, wsettings)
    x = RNG.standard_normal((2, 5, k)).astype(np.float32)
    before = run_ort(model, {"x": x})
    bias = model.graph.initializers["bias3"].const_value.numpy()
    expected = sum(x @ dequantize_weight(q).T for q in ctx.quantized.values()) + bias
    np.testing.assert_allclose(before, expected, rtol=1e-5, atol=1e-5)
    lower = LowerLinears(target=target)
    counts = lower.run(stage, ctx)
    lower.ensures(stage, ctx)
    assert sum(counts.values()) == 4 and ops(model)[op] >= 4
    assert not [s for s in stage.sites() if s.weight_name in ctx.quantized]
    np.testing.assert_allclose(run_ort(model, {"x": x}), before, rtol=1e-5, atol=1e-5)


def test_ensures_decodes_the_stored_bytes():
    model, stage, ctx = quantized_stage(64, 32, {"format": "mxfp4"}, layouts=("nk",))
    lower = LowerLinears(target="matmulnbits")
    lower.run(stage, ctx)
    lower.ensures(stage, ctx)
    packed = model.graph.initializers["layer0.nk.weight.qweight"]
    data = packed.const_value.numpy().copy()
    data[0, 0, 0] ^= 0x10  # one flipped bit in the stored nibbles
    packed.const_value = ir.Tensor(data, name=packed.name)
    with pytest.raises(PostconditionError, match="do not decode to its codes"):
        lower.ensures(stage, ctx)


def test_w4a8_fuses_activation_quantization_into_accuracy_level_4():
    k = 256
    model, stage, ctx = quantized_stage(k, 64, {"format": "int4", "block_size": 32}, layouts=("nk",))
    QuantizeActivations(format="int8", block_size=32).run(stage, ctx)
    counts = LowerLinears(target="matmulnbits").run(stage, ctx)
    assert counts == {"matmulnbits.int_act.nk": 1}
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert node.attributes.get_int("accuracy_level") == 4 and ops(model)[QUANT_ACT] == 0
    x = RNG.standard_normal((1, 7, k)).astype(np.float32)
    (q,) = ctx.quantized.values()
    expected = fake_quant_activation_np(x, ActFormat("int8", 32)) @ dequantize_weight(q).T
    np.testing.assert_allclose(run_ort(model, {"x": x}, "all"), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("wfmt", [{"format": "int4", "block_size": 32}, {"format": "int4", "block_size": 0},
                                  {"format": "mxfp4"}])
@pytest.mark.parametrize("afmt", [ActFormat("int8", 32), ActFormat("int8", 0), ActFormat("int4", 32),
                                  ActFormat("int4", 0), ActFormat("mxfp4", 32)], ids=str)
def test_runtime_ops_fuse_every_activation_format(wfmt, afmt):
    k = 160
    model, stage, ctx = quantized_stage(k, 48, wfmt, layouts=("nk", "gemm_bias"))
    QuantizeActivations(format=afmt.kind, block_size=afmt.block_size).run(stage, ctx)
    x = RNG.standard_normal((2, 3, k)).astype(np.float32)
    bias = model.graph.initializers["bias1"].const_value.numpy()
    expected = sum(fake_quant_activation_np(x, afmt) @ dequantize_weight(q).T for q in ctx.quantized.values()) + bias
    counts = LowerLinears(target="qpasses").run(stage, ctx)
    assert counts == {"qpasses.matmul_act.nk": 1, "qpasses.matmul_act.gemm_bias": 1}
    assert ops(model)[QUANT_ACT] == 0
    np.testing.assert_allclose(run_ort(model, {"x": x}), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_mismatched_activation_format_is_not_fused_but_expanded():
    model, stage, ctx = quantized_stage(64, 32, {"format": "int4", "block_size": 32}, layouts=("nk",))
    QuantizeActivations(format="int4", block_size=0).run(stage, ctx)
    counts = LowerLinears(target="matmulnbits").run(stage, ctx)
    assert counts == {"matmulnbits.int.nk": 1, "expand.quant_act": 1}
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert node.attributes.get_int("accuracy_level") == 0


def test_per_channel_int4_cannot_become_matmulnbits_and_says_why():
    _, stage, ctx = quantized_stage(96, 16, {"format": "int4", "block_size": 0}, layouts=("nk",))
    lower = LowerLinears(target="matmulnbits")
    assert lower.run(stage, ctx) == {}
    with pytest.raises(PostconditionError, match="not lowered.*block of 96 is not a power of two"):
        lower.ensures(stage, ctx)


def test_rules_work_standalone_on_a_foreign_model():
    """Without a plan the rule set quantizes by RTN itself: usable by other compilers as is."""
    model, weights = linear_model(128, 32, layouts=("kn",))
    fmt = WeightFormat("int4", 32)
    n = RewriteRuleSet(matmulnbits_rules(fmt=fmt)).apply_to_model(model)
    assert n == 1 and ops(model)["MatMulNBits"] == 1
    from qpasses.formats import quantize_weight

    x = RNG.standard_normal((1, 3, 128)).astype(np.float32)
    (w,) = weights.values()
    expected = x @ dequantize_weight(quantize_weight(w, fmt)).T
    np.testing.assert_allclose(run_ort(model, {"x": x}), expected, rtol=1e-5, atol=1e-5)


def quant_act_model(k: int, fmt: ActFormat) -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape(["b", "s", k]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node(QUANT_ACT, [x], attributes={"kind": fmt.kind, "block_size": fmt.block_size}, domain=DOMAIN)
    node.outputs[0].name = "y"
    node.outputs[0].shape, node.outputs[0].type = x.shape, x.type
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 21, DOMAIN: 1})
    return ir.Model(graph, ir_version=10)


def hard_activations(k: int) -> np.ndarray:
    x = RNG.standard_normal((3, 4, k)).astype(np.float32)
    x[0, 0, 3] = 300.0  # an outlier channel
    x[0, 1] = 0.0  # an all-zero token
    x[1, 0, :8] = np.array([0.25, -0.75, 1.25, 1.75, 2.5, -3.5, 5.0, 6.0], np.float32)  # ties
    x[2, 2] *= 1e-30  # tiny values near the E8M0 floor
    return x


@pytest.mark.parametrize("fmt", [ActFormat("int8", 32), ActFormat("int8", 0), ActFormat("int4", 0),
                                 ActFormat("int4", 32), ActFormat("mxfp4", 32)])
@pytest.mark.parametrize("k", [64, 80])  # 80: a short last block
def test_expanded_activation_quantization_is_bit_exact(fmt, k):
    model = quant_act_model(k, fmt)
    assert RewriteRuleSet(expand_rules()).apply_to_model(model) == 1
    x = hard_activations(k)
    got = run_ort(model, {"x": x}, "disable")
    np.testing.assert_array_equal(got, fake_quant_activation_np(x, fmt))
