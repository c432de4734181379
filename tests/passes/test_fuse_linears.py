"""fuse_linears: siblings reading one input become one wide runtime op plus a Split, bit for bit."""

from collections import Counter

import numpy as np
import pytest
from onnx_builders import linear_model, run_ort

from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.base import Context
from qpasses.passes.fuse_linears import FuseLinears
from qpasses.passes.lower_linears import LowerLinears
from qpasses.passes.quantize_activations import QuantizeActivations
from qpasses.passes.quantize_weights import QuantizeWeights


@pytest.mark.parametrize("wfmt", [{"format": "mxfp4"}, {"format": "int4", "block_size": 32},
                                  {"format": "int4", "block_size": 32, "symmetric": False}])
@pytest.mark.parametrize("act", [None, ("int8", 32)])
def test_siblings_fuse_into_one_op_with_identical_outputs(wfmt, act):
    model, _ = linear_model(96, 40, layouts=("nk", "nk", "kn"))  # three linears of one input, like q/k/v
    stage, ctx = OnnxStage({"logits": model}), Context()
    QuantizeWeights(**wfmt).run(stage, ctx)
    if act:
        QuantizeActivations(format=act[0], block_size=act[1]).run(stage, ctx)
    LowerLinears(target="qpasses").run(stage, ctx)
    x = np.random.default_rng(0).standard_normal((2, 3, 96)).astype(np.float32)
    before = run_ort(model, {"x": x})
    fuse = FuseLinears()
    counts = fuse.run(stage, ctx)
    fuse.ensures(stage, ctx)
    op = "MatMulMXFP4" if wfmt["format"] == "mxfp4" else "MatMulInt4"
    assert counts == {f"fuse.{op}x3": 1}
    kinds = Counter(n.op_type for n in model.graph)
    assert kinds[op] == 1 and kinds["Split"] == 1
    packed = [name for name in model.graph.initializers if ".q" in name]
    assert packed and all("+" in name for name in packed)  # only the stacked copies are left
    np.testing.assert_array_equal(run_ort(model, {"x": x}), before)


def test_nothing_to_fuse_is_not_an_error():
    model, _ = linear_model(64, 16, layouts=("nk",))
    stage, ctx = OnnxStage({"logits": model}), Context()
    QuantizeWeights(format="mxfp4").run(stage, ctx)
    LowerLinears(target="qpasses").run(stage, ctx)
    assert FuseLinears().run(stage, ctx) == {}
