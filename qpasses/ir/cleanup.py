"""The cleanup every finished ONNX graph gets (`finalize`): stage-B passes run it before they
match, deployment after lowering. Weights are never folded, so no initializer is renamed or copied.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.rewriter
from onnxscript.optimizer import fold_constants_ir
from onnxscript.rewriter.rules import common as rules

from qpasses.errors import PostconditionError

EXTERNAL_MIN_BYTES = 1024  # initializers this large go to the deployment's data file (export.deploy)
FOLD_MAX_ELEMENTS = EXTERNAL_MIN_BYTES // 8  # folded constants stay small enough to live inline
# No-ops and whole-range slices only: onnxscript's full default set took 18-100 s on the
# SmolLM2-135M logits graph (its basic rules dominate) for 6 fewer nodes (2799 vs 2805).
CLEANUP_RULES = (
    *rules.add_0_rule.commute(), *rules.mul_by_1_rule.commute(), rules.sub_0_rule, rules.div_by_1_rule,
    rules.dropout_zero_rule, rules.dropout_inference_rule, rules.no_op_cast_rule, rules.no_op_expand_rule,
    rules.no_op_transpose_rule, rules.collapse_slice_rule, rules.collapse_slice2_rule,
)
DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
                  "namespace")


def finalize(model: ir.Model) -> None:
    """Light cleanup for one graph after lowering; in place. Exactly:

    1. constant folding (onnxscript) of nodes whose inputs are all constants and whose result
       has at most FOLD_MAX_ELEMENTS elements, except any node that reads an initializer:
       weights are never transposed, cast or copied, so no weight is duplicated (the tied
       table stays one) or renamed;
    2. onnxscript rewrite rules `CLEANUP_RULES`: drop x+0, x*1, x-0, x/1, inference Dropout,
       same-type Cast, same-shape Expand, identity Transpose; collapse no-op slices (standard
       ops only, no weight touched), then folding again;
    3. removal of unused nodes, initializers (e.g. float weights replaced by lowering) and
       opset imports, and common-subexpression elimination (onnx_ir passes);
    4. removal of the exporter's debug metadata on nodes (stack traces, fx node text, class
       hierarchy, namespace); `pkg.torch.onnx.name_scopes` and every other key are kept.

    Raises PostconditionError if a large initializer (>= EXTERNAL_MIN_BYTES) appeared."""
    before = set(large_initializers(model.graph))
    _fold(model)
    onnxscript.rewriter.rewrite(model, pattern_rewrite_rules=CLEANUP_RULES)
    _fold(model)
    common.RemoveUnusedNodesPass()(model)
    common.CommonSubexpressionEliminationPass()(model)
    common.RemoveUnusedNodesPass()(model)
    common.RemoveUnusedOpsetsPass()(model)
    for node in model.graph.all_nodes():
        for key in DEBUG_METADATA:
            node.metadata_props.pop(key, None)
    created = sorted(set(large_initializers(model.graph)) - before)
    if created:
        raise PostconditionError(f"finalize created large initializers {created[:5]}; weights must keep their names")


def _fold(model: ir.Model) -> None:
    fold_constants_ir(model, onnx_shape_inference=True, output_size_limit=FOLD_MAX_ELEMENTS,
                      should_fold=_reads_no_initializer)


def _reads_no_initializer(node: ir.Node) -> bool | None:
    """Folding veto: False for a node reading an initializer, else the folder's own rules."""
    return False if any(v is not None and v.is_initializer() for v in node.inputs) else None


def large_initializers(graph: ir.Graph) -> dict[str, ir.Value]:
    """The initializers of at least EXTERNAL_MIN_BYTES, by name."""
    return {name: v for name, v in graph.initializers.items()
            if v.const_value is not None and v.const_value.nbytes >= EXTERNAL_MIN_BYTES}
