"""passes.coverage: a float linear left after lowering is kept on purpose (an ignore pattern, with its
reason) or is an error naming it; a recipe without weight passes expects nothing."""

import pytest
from onnx_builders import linear_model

from qpasses.errors import PostconditionError
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.passes.coverage import unquantized_sites
from qpasses.passes.registry import PASSES


@pytest.fixture
def graph():
    return OnnxStage({"logits": linear_model(16, 8)[0]})  # two float linears: layer0.nk, layer1.kn


def test_ignored_sites_are_listed_with_the_pattern_that_kept_them(graph):
    qw = PASSES["quantize_weights"](ignore=["layer1.*"])
    assert unquantized_sites(graph, [qw], ("layer0.*",)) == [
        {"name": "layer0.nk", "shape": [8, 16], "reason": "ignored by recipe pattern 'layer0.*'"},
        {"name": "layer1.kn", "shape": [8, 16], "reason": "ignored by quantize_weights pattern 'layer1.*'"}]


def test_a_site_some_weight_pass_selects_must_not_stay_float(graph):
    passes = [PASSES["quantize_weights"](ignore=["layer1.*"]), PASSES["optimize_weights"]()]
    with pytest.raises(PostconditionError, match=r"^1 linear\(s\) the recipe quantizes .*: layer1.kn \[8x16\];"):
        unquantized_sites(graph, passes, ("layer0.*",))


def test_a_recipe_without_weight_passes_expects_nothing(graph):
    assert unquantized_sites(graph, [PASSES["lower_linears"]()], ()) == []
