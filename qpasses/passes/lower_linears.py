"""lower_linears: replace every planned linear (and embedding lookup) by its quantized form (stage B).

target "qpasses" (default): INT4 and MXFP4 → our runtime's qpasses.MatMulInt4 / MatMulMXFP4, with the
activation quantization in front fused into the op (INT8 weights → MatMulNBits). target
"matmulnbits": INT4/INT8 → com.microsoft.MatMulNBits (int8-per-32 activation quantization fuses into
accuracy_level 4); target "qdq": INT → DequantizeLinear (opset 21, blocked) + MatMul. Under those two
stock-ORT targets MXFP4 → standard-op decode + MatMul (for users who cannot load custom ops).
A Gather of a planned table → GatherBlockQuantized (INT) or a decode of the gathered MXFP4 rows,
sharing bytes with a tied lm_head. A low-rank branch (SRR) fuses into the runtime op's L, R inputs;
under the stock-ORT targets it stays MatMul → MatMul → Add with its factors stored in fp16. Any
QuantizeActivation left over is expanded into standard ops. Legality postcondition: no planned site
and no QuantizeActivation survives, and every packed weight decodes to exactly the codes of its plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpasses.domain import DOMAIN, QUANT_ACT
from qpasses.errors import LoweringError, PostconditionError
from qpasses.formats import QuantizedWeight, unpack_mxfp4
from qpasses.formats.packing import unpack_int_blocked
from qpasses.passes.base import Pass
from qpasses.rules.apply import apply_in_order, explain
from qpasses.rules.expand_quant_act import expand_rules
from qpasses.rules.lower_gather import gather_rules
from qpasses.rules.lower_int import matmulnbits_rules, qdq_rules
from qpasses.rules.lower_mxfp4_std import mxfp4_std_rules
from qpasses.rules.lower_runtime import runtime_rules
from qpasses.rules.lowrank_fp16 import lowrank_fp16_rules
from qpasses.runtime.ort import QDQ_MATMULNBITS_ACCURACY_LEVEL

# The ordered rule set of each target, as (rule factory, the settings it takes). The rules apply one
# at a time over the whole graph, in this order, so where two match one node the earlier wins (in
# each factory, a variant fusing the activation or the low-rank branch comes before the plain one).
# Under "qpasses" our runtime op takes INT4 and MXFP4, MatMulNBits the INT8 weights it leaves.
_STANDARD = (
    (mxfp4_std_rules, "plan"),  # MXFP4 under the stock-ORT targets: standard-op decode + MatMul
    (gather_rules, "plan"),  # embedding lookups of planned tables
    (expand_rules,),  # any QuantizeActivation no linear rule fused
    (lowrank_fp16_rules,),  # low-rank branches left in standard ops: fp16 factors
)
RULE_SETS = {
    "qpasses": ((runtime_rules, "plan"), (matmulnbits_rules, "plan", "accuracy_level"), *_STANDARD),
    "matmulnbits": ((matmulnbits_rules, "plan", "accuracy_level"), *_STANDARD),
    "qdq": ((qdq_rules, "plan"), *_STANDARD),
}
TARGETS = tuple(RULE_SETS)


@dataclass(frozen=True)
class Settings:
    target: str = "qpasses"
    accuracy_level: int = 0  # MatMulNBits accuracy level for linears with float activations

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} is not one of {TARGETS}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError("accuracy_level must be 0..4")


def stored_codes(model, name: str, q) -> QuantizedWeight | None:
    """Decode the packed bytes the lowering stored for weight `name` (MatMulNBits / MatMulInt4 or MXFP4 layout)."""
    inits = model.graph.initializers
    b, scales = inits.get(f"{name}.qweight"), inits.get(f"{name}.qscales")
    if b is None or scales is None or b.const_value.dtype != ir.DataType.UINT8:
        return None  # not lowered here, or a QDQ tensor (typed INT4/INT8 values, nothing packed by us)
    if q.fmt.kind == "mxfp4":
        return unpack_mxfp4(b.const_value.numpy(), scales.const_value.numpy(), q.shape, q.fmt.scale_rule)
    zeros = inits.get(f"{name}.qzeros")
    packed = {"B": b.const_value.numpy(), "scales": scales.const_value.numpy(),
              "zero_points": None if zeros is None else zeros.const_value.numpy()}
    return unpack_int_blocked(packed, q.fmt, q.shape)


def _drop_unread(graph: ir.Graph) -> None:
    """Remove the initializers nothing reads any more (the float weights the packed ops replaced)
    now rather than when the deployment is saved: they hold the stage-A weights' memory."""
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            graph.initializers.pop(name)


def same_codes(a: QuantizedWeight, b: QuantizedWeight) -> bool:
    zp = (a.zero_points is None and b.zero_points is None) or np.array_equal(a.zero_points, b.zero_points)
    return np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales) and zp


def _graph_name(stage, graph) -> str:
    return next(name for name, model in stage.models.items() if model.graph is graph)


class LowerLinears(Pass):
    name = "lower_linears"
    stages = ("onnx",)
    Settings = Settings

    def rules(self, ctx) -> list:
        """This target's rule set (RULE_SETS), built for the plan and settings."""
        given = {"plan": ctx.quantized, "accuracy_level": self.settings.accuracy_level}
        return [rule for factory, *keys in RULE_SETS[self.settings.target]
                for rule in factory(**{k: given[k] for k in keys})]

    def run(self, graph, ctx):
        per_graph = {}
        for gname, model in graph.models.items():
            per_graph[gname] = apply_in_order(model, self.rules(ctx))
            _drop_unread(model.graph)
        first = next(iter(per_graph.values()))
        for gname, counts in per_graph.items():
            if counts != first:
                raise LoweringError(f"the {gname} graph lowered {counts}, the first graph {first}; they must match")
        if self.settings.target == "qdq":
            # ORT fuses DequantizeLinear + MatMul into MatMulNBits at accuracy level 4 (int8 activations)
            # unless told otherwise: the file carries the level its stage-A model was measured with.
            ctx.notes.ort = {"config": {QDQ_MATMULNBITS_ACCURACY_LEVEL: str(self.settings.accuracy_level)}}
        return first

    def ensures(self, graph, ctx):
        planned = ctx.quantized
        left = [s for s in graph.sites() if s.weight_name in planned]
        if left:
            use = left[0].uses[0]
            why = "; ".join(explain(graph.models[_graph_name(graph, use.graph)], self.rules(ctx), use.node))
            raise PostconditionError(f"{len(left)} planned linear(s) were not lowered, e.g. {left[0].name}: "
                                     f"{why or 'no rule pattern matched it'}")
        tables = [t.name for t in graph.embedding_sites() if t.weight_name in planned]
        if tables:
            raise PostconditionError(f"embedding table(s) {tables} were planned but not lowered")
        for gname, model in graph.models.items():
            if any(n.domain == DOMAIN and n.op_type == QUANT_ACT for n in model.graph):
                raise PostconditionError(f"a {QUANT_ACT} node survived lowering in the {gname} graph")
            for name, q in planned.items():  # decode(pack(q)) == q, on the bytes really stored
                got = stored_codes(model, name, q)
                if got is not None and not same_codes(got, q):
                    raise PostconditionError(f"{name}: the packed bytes in the {gname} graph "
                                             "do not decode to its codes")
