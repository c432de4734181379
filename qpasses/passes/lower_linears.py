"""lower_linears: replace every planned linear (and embedding lookup) by its quantized form (stage B).

target "matmulnbits": INT4/INT8 → com.microsoft.MatMulNBits (int8-per-32 activation quantization
fuses into accuracy_level 4); target "qdq": INT → DequantizeLinear (opset 21, blocked) + MatMul.
MXFP4 → standard-op decode + MatMul under both targets. A Gather of a planned INT table →
GatherBlockQuantized (sharing bytes with a tied lm_head). Any QuantizeActivation left over is
expanded into standard ops. Legality postcondition: no planned site and no QuantizeActivation
survives, and every packed weight decodes to exactly the codes of its plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from onnxscript.rewriter._rewrite_rule import RewriteRuleSet

from qpasses.errors import LoweringError, PostconditionError
from qpasses.ir.fx_ops import DOMAIN, QUANT_ACT
from qpasses.passes.base import Pass
from qpasses.rules.expand_quant_act import expand_rules
from qpasses.rules.explain import explain
from qpasses.rules.lower_gather import gather_rules
from qpasses.rules.lower_int import matmulnbits_rules, qdq_rules
from qpasses.rules.lower_mxfp4_std import mxfp4_std_rules

TARGETS = ("matmulnbits", "qdq")
# ORT fuses DequantizeLinear + MatMul into MatMulNBits; this session option keeps that fused op
# computing with float activations (accuracy level 0) so a QDQ W4A16 file stays W4A16.
QDQ_ACCURACY_KEY = "session.qdq_matmulnbits_accuracy_level"


@dataclass(frozen=True)
class Settings:
    target: str = "matmulnbits"
    accuracy_level: int = 0  # MatMulNBits accuracy level for linears with float activations

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} is not one of {TARGETS}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError("accuracy_level must be 0..4")


def _graph_name(stage, graph) -> str:
    return next(name for name, model in stage.models.items() if model.graph is graph)


class LowerLinears(Pass):
    name = "lower_linears"
    stages = ("onnx",)
    Settings = Settings

    def rules(self, ctx) -> list:
        plan = ctx.quantized
        if self.settings.target == "matmulnbits":
            ints = matmulnbits_rules(plan=plan, accuracy_level=self.settings.accuracy_level)
        else:
            ints = qdq_rules(plan=plan)
        return ints + mxfp4_std_rules(plan=plan) + gather_rules(plan) + expand_rules()

    def run(self, graph, ctx):
        per_graph = {}
        for gname, model in graph.models.items():
            counts: Counter[str] = Counter()
            for rule in self.rules(ctx):
                n = RewriteRuleSet([rule]).apply_to_model(model)
                if n:
                    counts[rule.name] += n
            per_graph[gname] = dict(counts)
        first = next(iter(per_graph.values()))
        for gname, counts in per_graph.items():
            if counts != first:
                raise LoweringError(f"the {gname} graph lowered {counts}, the first graph {first}; they must match")
        if self.settings.target == "qdq":
            ctx.notes["ort"] = {"config": {QDQ_ACCURACY_KEY: str(self.settings.accuracy_level)}}
        return first

    def ensures(self, graph, ctx):
        planned = ctx.quantized
        left = [s for s in graph.sites() if s.weight_name in planned]
        if left:
            use = left[0].uses[0]
            why = "; ".join(explain(graph.models[_graph_name(graph, use.graph)], self.rules(ctx), use.node))
            raise PostconditionError(f"{len(left)} planned linear(s) were not lowered, e.g. {left[0].name}: "
                                     f"{why or 'no rule pattern matched it'}")
        tables = [t.name for t in graph.embedding_sites()  # tables GatherBlockQuantized can read must be lowered
                  if t.weight_name in planned and planned[t.weight_name].fmt.kind in ("int4", "int8")]
        if tables:
            raise PostconditionError(f"embedding table(s) {tables} were planned but not lowered")
        for gname, model in graph.models.items():
            if any(n.domain == DOMAIN and n.op_type == QUANT_ACT for n in model.graph):
                raise PostconditionError(f"a {QUANT_ACT} node survived lowering in the {gname} graph")
