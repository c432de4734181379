"""Embedding quantization: GatherBlockQuantized rebuilds the snapped table exactly, and a tied
lm_head's MatMulNBits (or MatMulInt4) reads the very same packed initializer."""

import numpy as np
import pytest
from onnx_builders import run_ort, tied_embedding_model

from qpasses.errors import RecipeError
from qpasses.formats import dequantize_weight
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.base import Context
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.quantize_embeddings import QuantizeEmbeddings
from qpasses.passes.quantize_weights import QuantizeWeights

IDS = np.array([[0, 5, 17, 63], [1, 1, 2, 40]], np.int64)


@pytest.mark.parametrize("fmt, hidden", [("int4", 96), ("int4", 80), ("int8", 96)])  # 80: ragged last block
def test_embedding_alone(fmt, hidden):
    model, w = tied_embedding_model(64, hidden)
    stage, ctx = OnnxStage({"logits": model}), Context()
    assert QuantizeEmbeddings(format=fmt, block_size=32).run(stage, ctx) == {f"embedding.{fmt}_g32": 1}
    before = run_ort(model, {"ids": IDS})
    wq = dequantize_weight(ctx.quantized["embed.weight"])
    np.testing.assert_allclose(before, wq[IDS] @ wq.T, rtol=1e-5, atol=1e-5)
    lower = LowerLinears(target="matmulnbits")
    counts = lower.run(stage, ctx)
    lower.ensures(stage, ctx)
    assert counts == {"matmulnbits.int.nk": 1, "gather.block_quantized": 1}  # the tied table: both lowered
    np.testing.assert_allclose(run_ort(model, {"ids": IDS}), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target, op", [("matmulnbits", "MatMulNBits"), ("qpasses", "MatMulInt4")])
def test_tied_lm_head_and_embedding_share_one_packed_initializer(target, op):
    model, _ = tied_embedding_model(64, 96)
    stage, ctx = OnnxStage({"logits": model}), Context()
    QuantizeWeights(format="int4", block_size=32).run(stage, ctx)
    assert QuantizeEmbeddings(format="int4", block_size=32).run(stage, ctx) == {"embedding.tied": 1}
    before = run_ort(model, {"ids": IDS})
    LowerLinears(target=target).run(stage, ctx)
    gbq = next(n for n in model.graph if n.op_type == "GatherBlockQuantized")
    mnb = next(n for n in model.graph if n.op_type == op)
    assert gbq.inputs[0] is mnb.inputs[1]
    assert "embed.weight" not in model.graph.initializers  # the fp32 table is read no more: lowering drops it
    np.testing.assert_allclose(run_ort(model, {"ids": IDS}), before, rtol=1e-5, atol=1e-5)


def test_mxfp4_table_gathers_packed_rows_shared_with_the_lm_head():
    model, _ = tied_embedding_model(64, 80)  # 80: a ragged last block
    stage, ctx = OnnxStage({"logits": model}), Context()
    assert QuantizeEmbeddings(format="mxfp4").run(stage, ctx) == {"embedding.mxfp4_g32": 1}
    before = run_ort(model, {"ids": IDS})
    lower = LowerLinears(target="qpasses")
    assert lower.run(stage, ctx) == {"qpasses.matmul.nk": 1, "gather.mxfp4": 1}
    lower.ensures(stage, ctx)
    head = next(n for n in model.graph if n.op_type == "MatMulMXFP4")
    gathers = [n for n in model.graph if n.op_type == "Gather" and n.inputs[0] in (head.inputs[1], head.inputs[2])]
    assert len(gathers) == 2  # nibbles and exponents, the very initializers the lm_head reads
    np.testing.assert_allclose(run_ort(model, {"ids": IDS}), before, rtol=1e-5, atol=1e-5)


def test_tied_table_with_two_formats_is_refused():
    model, _ = tied_embedding_model(64, 96)
    stage, ctx = OnnxStage({"logits": model}), Context()
    QuantizeWeights(format="int4", block_size=128).run(stage, ctx)
    with pytest.raises(RecipeError, match="make them agree"):
        QuantizeEmbeddings(format="int4", block_size=32).run(stage, ctx)
