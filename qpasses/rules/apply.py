"""Apply an ordered rule set, and ask it why it did not fire.

A rule set is an ordered sequence: each rule applies over the whole model in turn, so where two
rules match one node the earlier one wins. Why a rule did not fire comes from its check, asked
through onnxscript's MatchingTracer (a dry run that changes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from onnxscript.rewriter import MatchingTracer, MatchResult, MatchStatus, RewriteRule, RewriteRuleSet


def apply_in_order(model: ir.Model, rules: Sequence[RewriteRule]) -> dict[str, int]:
    """Apply `rules` one at a time, in order; {rule name: rewrites} for the rules that fired."""
    counts: dict[str, int] = {}
    for rule in rules:
        n = RewriteRuleSet([rule]).apply_to_model(model)
        if n:
            counts[rule.name] = counts.get(rule.name, 0) + n
    return counts


def failures(model: ir.Model, rules: Sequence[RewriteRule]) -> list[tuple[RewriteRule, ir.Node, MatchResult]]:
    """(rule, node, failed check) wherever a rule's pattern matched at `node` but its check failed (with a
    reason), in graph order."""
    tracer = MatchingTracer()
    for rule in rules:
        RewriteRuleSet([rule]).apply_to_model(model, tracer=tracer)
    found = [(rule, m.root_node, m.match_result) for rule, matches in tracer.best_matches_map.items()
             for m in matches if m.status == MatchStatus.CONDITION_FAILED and m.match_result.reason]
    order = {node: i for i, node in enumerate(model.graph)}
    return sorted(found, key=lambda f: order.get(f[1], len(order)))


def explain(model: ir.Model, rules: Sequence[RewriteRule], node: ir.Node) -> list[str]:
    """'rule: reason' for every rule whose pattern matched at `node` but whose check failed."""
    return [f"{rule.name}: {result.reason}" for rule, root, result in failures(model, rules) if root is node]
