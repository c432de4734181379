"""Why did no rule rewrite this node? Ask each rule's check through onnxscript's MatchingTracer
(a dry run that changes nothing) and collect the reasons that name the node."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchStatus, RewriteRuleSet


def explain(model: ir.Model, rules: list, node: ir.Node) -> list[str]:
    """'rule: reason' for every rule whose pattern matched at `node` but whose check failed."""
    tracer = MatchingTracer()
    for rule in rules:
        RewriteRuleSet([rule]).apply_to_model(model, tracer=tracer)
    reasons = []
    for rule, matches in tracer.best_matches_map.items():
        for m in matches:
            if m.root_node is node and m.status == MatchStatus.CONDITION_FAILED and m.match_result.reason:
                reasons.append(f"{rule.name}: {m.match_result.reason}")
    return reasons
