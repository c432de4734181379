import numpy as np
import pytest
from onnx_builders import linear_model, run_ort

from qpasses.domain import QUANT_ACT
from qpasses.errors import PostconditionError
from qpasses.formats.spec import ActFormat
from qpasses.ir.onnx_stage import OnnxStage


def test_sites_found_by_pattern_in_every_layout():
    model, weights = linear_model(32, 16, layouts=("nk", "kn", "gemm"))
    sites = {s.weight_name: s for s in OnnxStage({"logits": model}).sites()}
    assert set(sites) == set(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(sites[name].weight(), w)  # always [N, K]
        assert sites[name].name == name.removesuffix(".weight")


def test_set_weight_keeps_the_layout_and_changes_the_output():
    model, weights = linear_model(32, 16, layouts=("nk", "kn", "gemm"))
    stage = OnnxStage({"logits": model})
    x = np.random.default_rng(0).standard_normal((2, 3, 32)).astype(np.float32)
    for site in stage.sites():
        site.set_weight(2 * site.weight())
    expected = sum(x @ (2 * w).T for w in weights.values())
    np.testing.assert_allclose(run_ort(model, {"x": x}), expected, rtol=1e-5, atol=1e-5)


def test_same_weight_in_two_graphs_is_one_site():
    a, _ = linear_model(32, 16, layouts=("nk",))
    b, _ = linear_model(32, 16, layouts=("nk",))
    sites = OnnxStage({"logits": a, "decoder": b}).sites()
    assert len(sites) == 1 and len(sites[0].uses) == 2
    sites[0].set_weight(np.zeros((16, 32), np.float32))
    for m in (a, b):
        assert not m.graph.initializers["layer0.nk.weight"].const_value.numpy().any()


def test_quantize_input_inserts_one_node_per_use():
    model, _ = linear_model(32, 16, layouts=("nk", "kn"))
    stage = OnnxStage({"logits": model})
    for s in stage.sites():
        s.quantize_input(ActFormat("int8", 32))
    stage.verify()
    quant = [n for n in model.graph if n.op_type == QUANT_ACT]
    assert len(quant) == 2 and model.opset_imports["qpasses"] == 1
    assert {n.attributes.get_string("kind") for n in quant} == {"int8"}


def test_verify_catches_a_dangling_input():
    model, _ = linear_model(32, 16, layouts=("nk",))
    node = next(n for n in model.graph if n.op_type == "MatMul")
    model.graph.remove(node.inputs[1].producer(), safe=False)
    with pytest.raises(PostconditionError, match="which nothing produces"):
        OnnxStage({"logits": model}).verify()


def test_dump_lists_ops_and_sites():
    model, _ = linear_model(32, 16, layouts=("nk",))
    text = OnnxStage({"logits": model}).dump()
    assert "MatMul" in text and "layer0.nk [16x32]" in text


@pytest.mark.parametrize("output", ["logits", "out"])
def test_the_linear_that_makes_the_logits_has_the_role_lm_head(output):
    """An exporter's anonymous lm_head weight (val_451) is matched by `lm_head` through its role,
    whether the output is named `logits` or is the only float output of vocabulary width; its name
    stays the weight's."""
    import onnx_ir as ir
    from onnx_builders import FOREIGN_LINEARS, FOREIGN_LM_HEAD, foreign_lm

    proto, _ = foreign_lm(logits_name=output)
    sites = {s.weight_name: s for s in OnnxStage({"logits": ir.from_proto(proto)}).sites()}
    assert set(sites) == {*FOREIGN_LINEARS, FOREIGN_LM_HEAD}
    head = sites[FOREIGN_LM_HEAD]
    assert (head.name, head.role) == (FOREIGN_LM_HEAD, "lm_head")
    assert head.matches(["lm_head"]) and not head.matches(["model.*"])
    assert not any(sites[n].role or sites[n].matches(["lm_head"]) for n in FOREIGN_LINEARS)


def test_no_role_without_logits():
    """An output that is not `logits` and not of an embedding table's width is no lm_head."""
    model, _ = linear_model(32, 16, layouts=("kn",))
    assert [s.role for s in OnnxStage({"logits": model}).sites()] == [None]
