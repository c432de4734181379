"""fuse_rotations: an exported online block-Hadamard rotation in front of a runtime matmul becomes the
kernel's own FWHT (hadamard_block, D) with the same outputs to float rounding; other rotations stay."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx_builders import linear_model, run_ort

from qpasses.compiler import to_stage_b
from qpasses.domain import DOMAIN
from qpasses.export.capture import capture
from qpasses.ir.fx_stage import FxStage
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.models.tiny import build_tiny_llama
from qpasses.numerics.rotation import Rotation
from qpasses.passes.base import Context
from qpasses.passes.fuse_rotations import FuseRotations
from qpasses.passes.registry import PASSES
from qpasses.runtime.ops import INPUTS

STAGE_A = [("untie_embeddings", {}),
           ("rotate_inputs", {"inputs": ["norm", "attention", "other"], "block": 32, "seed": 3}),
           ("quantize_weights", {"format": "mxfp4", "scale_rule": "floor"}),
           ("quantize_activations", {"format": "mxfp4", "block_size": 32})]
STAGE_B = [("lower_linears", {"target": "qpasses"}), ("fuse_linears", {})]
IDS = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1)).numpy()


def _ops(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN]


def _d(node: ir.Node) -> ir.Value | None:
    i = INPUTS[node.op_type].index("D")
    return node.inputs[i] if i < len(node.inputs) else None


@pytest.fixture(scope="module")
def tiny_llama():
    """The logits graph of tiny-llama with an online random-sign I ⊗ H32 in front of every linear,
    lowered to MatMulMXFP4 (W4A4) and sibling-fused, and its logits."""
    graph, ctx = FxStage(capture(build_tiny_llama(), decoder=False)), Context()
    for name, settings in STAGE_A:
        PASSES[name](**settings).run(graph, ctx)
    stage = to_stage_b(graph)
    for name, settings in STAGE_B:
        PASSES[name](**settings).run(stage, ctx)
    feeds = {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}
    return stage, ctx, feeds, run_ort(stage.models["logits"], feeds)


def test_block_rotations_fuse_into_the_kernel(tiny_llama):
    stage, ctx, feeds, before = tiny_llama
    model = stage.models["logits"]
    ops = len(_ops(model))
    assert FuseRotations().run(stage, ctx) == {"fuse.rotation": ops}  # q/k/v, o, gate/up, down per layer + lm_head
    stage.verify()
    for node in _ops(model):
        assert node.attributes["hadamard_block"].value == 32
        assert _d(node) is not None and _d(node).name.startswith("rotations.")
    readers = {n.op_type for v in model.graph.initializers.values() if v.name.startswith("rotations.")
               for n, _ in v.uses()}
    assert readers == {"MatMulMXFP4"} and not [v for v in model.graph.initializers if v.endswith(".right")]
    after = run_ort(model, feeds)
    # The kernel's butterflies round differently from the MatMul by H32/√32 (~1e-7 relative), which can
    # flip an MXFP4 activation code sitting on a rounding tie: one element moves by a quantization step,
    # rarely. So: the typical difference is float rounding, the worst one a few such flips (measured:
    # no flips, bit-identical logits with the scalar and AVX-512 kernels; another MatMul may round otherwise).
    diff, scale = np.abs(after - before), np.abs(before).max()
    assert diff.mean() < 1e-4 * scale and diff.max() < 2e-2 * scale, (diff.mean() / scale, diff.max() / scale)


def _rotated_linears(rot: Rotation, wfmt: dict, extra_reader: bool = False) -> tuple[ir.Model, OnnxStage]:
    """x -> rotation (the export of fx_ops.rotate) -> two W4A4 linears lowered to our runtime op
    (and, when asked, the rotated x itself as a second graph output)."""
    model, _ = linear_model(rot.size, 16, layouts=("nk", "nk"))
    stage, ctx = OnnxStage({"logits": model}), Context()
    PASSES["quantize_weights"](**wfmt).run(stage, ctx)
    PASSES["quantize_activations"](format="mxfp4" if wfmt["format"] == "mxfp4" else "int4", block_size=32).run(
        stage, ctx)
    PASSES["lower_linears"](target="qpasses").run(stage, ctx)
    g = model.graph
    x = g.inputs[0]

    def const(name, array):
        v = ir.Value(name=f"rot.{name}", const_value=ir.tensor(np.ascontiguousarray(array, np.float32)))
        g.register_initializer(v)
        return v

    nodes, y = [], x
    if rot.signs is not None:
        nodes.append(ir.node("Mul", [x, const("signs", rot.signs)]))
        y = nodes[-1].outputs[0]
    dims = ir.node("Constant", [], attributes={"value_ints": [-1, rot.size // rot.block, rot.block]})
    nodes += [dims, ir.node("Reshape", [y, dims.outputs[0]])]
    nodes.append(ir.node("MatMul", [nodes[-1].outputs[0], const("right", rot.right)]))
    if rot.left is not None:
        nodes.append(ir.node("MatMul", [const("left_t", rot.left.T), nodes[-1].outputs[0]]))
    nodes += [shape := ir.node("Shape", [x]), ir.node("Reshape", [nodes[-1].outputs[0], shape.outputs[0]])]
    g.insert_before(next(iter(g)), nodes)
    rotated = nodes[-1].outputs[0]
    for node in _ops(model):
        node.replace_input_with(0, rotated)
    if extra_reader:
        rotated.name = "rotated"
        g.outputs.append(rotated)
    return model, stage


@pytest.mark.parametrize("rot, wfmt", [
    (Rotation.hadamard(64, block=32), {"format": "mxfp4"}),  # no signs: no Mul, no D
    (Rotation.hadamard(64, block=32), {"format": "int4", "block_size": 32}),
    (Rotation.hadamard(64, seed=1), {"format": "mxfp4"}),  # full width, a power of two: one block of K
], ids=["block32", "block32-int4", "full64-signs"])
def test_a_shared_rotation_fuses_and_stays_for_its_other_reader(rot, wfmt):
    model, stage = _rotated_linears(rot, wfmt, extra_reader=True)
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)}
    before = run_ort(model, x)
    assert FuseRotations().run(stage, Context()) == {"fuse.rotation": 2}
    stage.verify()
    for node in _ops(model):
        assert node.attributes["hadamard_block"].value == rot.block and node.inputs[0] is model.graph.inputs[0]
        assert (_d(node) is None) == (rot.signs is None)
    assert [n.op_type for n in model.graph].count("MatMul") == 1  # the graph output still reads the rotation
    np.testing.assert_allclose(run_ort(model, x), before, rtol=0, atol=1e-2 * np.abs(before).max())  # as above


@pytest.mark.parametrize("rot", [Rotation.hadamard(96, seed=1),  # full width: H12 ⊗ H8, a left factor
                                 Rotation(64, np.linalg.qr(np.random.default_rng(0).standard_normal((32, 32)))[0])],
                         ids=["kronecker", "not-hadamard"])
def test_other_rotations_are_left_alone(rot):
    model, stage = _rotated_linears(rot, {"format": "mxfp4"})
    ctx, before = Context(), stage.fingerprint()
    assert FuseRotations().run(stage, ctx) == {"fuse.rotation": 0}  # the manager refuses this zero
    assert stage.fingerprint() == before and all("hadamard_block" not in n.attributes for n in _ops(model))
    assert ("left factor" if rot.left is not None else "is not H_32") in ctx.notes.misses["fuse_rotations"][0]

