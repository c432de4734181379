"""fuse_linears: sibling runtime matmuls that read the same input become one op (q/k/v, gate/up).

Identity relied on: [x·W₁ᵀ | x·W₂ᵀ | …] = x·[W₁; W₂; …]ᵀ, and the packed rows of W (nibbles,
scales, zero points) are independent per output row, so concatenating them along N and splitting
the output along its last axis gives the same values, bit for bit (our kernels compute each
column on its own). Fewer, wider nodes cut the per-node cost that dominates a decode step.
Low-rank branches fuse too. Siblings that share L (optimize_weights solves them as one weight):
[(x L) R₁ | (x L) R₂] = (x L) [R₁ R₂], so L stays and R is concatenated along N. Otherwise
[(x L₁) R₁ | (x L₂) R₂] = x [L₁ L₂] · blockdiag(R₁, R₂): L side by side along the rank, R
block-diagonal (its zeros are streamed and multiplied: Σr·ΣN values instead of Σ rᵢNᵢ).
Siblings fuse when they are the same op with the same attributes but N, have constant weights, no
bias or sign input, and all or none carry a low-rank branch (of one dtype). Stage: onnx, after
lower_linears.

Graph surgery, not an onnxscript rule: the unit of this rewrite is every reader of one value that
shares a key (op, attributes but N, weights present, low-rank dtype), and their number varies (three
for q/k/v, two for gate/up, other counts elsewhere). A pattern binds a fixed number of nodes, so a rule
set would need one multi-output rule per group size, each matched over all orderings of the readers,
larger sizes first so that a pair does not take two of three; grouping by key is the whole match.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpasses.domain import DOMAIN
from qpasses.errors import PostconditionError
from qpasses.passes.base import Pass
from qpasses.rules.base import optional_input
from qpasses.runtime.ops import INPUTS, OPS

WEIGHT_INPUTS = {"MatMulMXFP4": 3, "MatMulInt4": 4}  # A and the packed weight inputs come first


@dataclass(frozen=True)
class Settings:
    pass


def _key(node: ir.Node):
    """Nodes with equal keys are siblings that can fuse; None if this node cannot."""
    if node.domain != DOMAIN or node.op_type not in OPS:
        return None
    names = INPUTS[node.op_type]
    weights = node.inputs[1:WEIGHT_INPUTS[node.op_type]]
    lowrank = [optional_input(node, names.index(p)) for p in "LR"]
    if any(v is not None and v.const_value is None for v in [*weights, *lowrank]):
        return None
    if any(optional_input(node, names.index(p)) is not None for p in ("bias", "D")):
        return None  # bias, D: not fused (yet)
    attrs = tuple(sorted((k, a.value) for k, a in node.attributes.items() if k != "N"))
    present = tuple(v is not None for v in weights)
    branch = None if lowrank[0] is None else lowrank[0].dtype
    return id(node.inputs[0]), node.op_type, attrs, present, branch


def _siblings(graph: ir.Graph) -> list[list[ir.Node]]:
    groups: dict = defaultdict(list)
    for node in graph:
        key = _key(node)
        if key is not None:
            groups[key].append(node)
    return [g for g in groups.values() if len(g) > 1]


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), blocks[0].dtype)
    r = n = 0
    for b in blocks:
        out[r:r + b.shape[0], n:n + b.shape[1]] = b
        r, n = r + b.shape[0], n + b.shape[1]
    return out


def _concat(graph: ir.Graph, values: list[ir.Value], how: str = "rows") -> ir.Value:
    """One initializer from the given constant initializers: stacked along axis 0 ("rows" = N),
    along axis 1 ("cols": L's rank) or block-diagonal ("diag": R)."""
    name = "+".join(v.name for v in values)
    if name in graph.initializers:
        return graph.initializers[name]
    arrays = [v.const_value.numpy() for v in values]
    data = _block_diag(arrays) if how == "diag" else np.concatenate(arrays, axis=0 if how == "rows" else 1)
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(values[0].dtype),
                     const_value=ir.Tensor(data, name=name))
    graph.register_initializer(value)
    return value


def _fuse(graph: ir.Graph, group: list[ir.Node]) -> None:
    first = group[0]
    nw = WEIGHT_INPUTS[first.op_type]
    inputs = [first.inputs[0]] + [None if optional_input(first, i) is None
                                  else _concat(graph, [n.inputs[i] for n in group]) for i in range(1, nw)]
    names = INPUTS[first.op_type]
    if optional_input(first, names.index("L")) is not None:
        inputs += [None] * (names.index("L") - len(inputs))
        lefts, rights = ([n.inputs[names.index(p)] for n in group] for p in "LR")
        if all(v is lefts[0] for v in lefts):  # one L: R side by side
            inputs += [lefts[0], _concat(graph, rights, "cols")]
        else:
            inputs += [_concat(graph, lefts, "cols"), _concat(graph, rights, "diag")]
    sizes = [n.attributes["N"].value for n in group]
    attrs = [a for k, a in first.attributes.items() if k != "N"] + [ir.AttrInt64("N", sum(sizes))]
    fused = ir.Node(DOMAIN, first.op_type, inputs, attributes=attrs, name=f"{first.name}.fused{len(group)}")
    split_sizes = ir.Value(name=f"{fused.name}.split", const_value=ir.tensor(np.array(sizes, np.int64)))
    graph.register_initializer(split_sizes)
    split = ir.Node("", "Split", [fused.outputs[0], split_sizes], attributes=[ir.AttrInt64("axis", -1)],
                    num_outputs=len(group), name=f"{fused.name}.split")
    graph.insert_before(first, [fused, split])
    for node, out in zip(group, split.outputs):
        old = node.outputs[0]
        name, old.name = old.name, None
        out.name, out.shape, out.type = name, old.shape, old.type
        old.replace_all_uses_with(out, replace_graph_outputs=True)
    old_weights = {optional_input(n, i) for n in group for i in range(1, len(n.inputs))} - {None}
    graph.remove(group, safe=True)
    for value in old_weights:
        if not value.uses() and value.name in graph.initializers:
            graph.initializers.pop(value.name)


class FuseLinears(Pass):
    name = "fuse_linears"
    stages = ("onnx",)
    expects_rewrites = False  # a model may have no siblings
    Settings = Settings

    def run(self, graph, ctx):
        per_graph = {}
        for gname, model in graph.models.items():
            counts: Counter[str] = Counter()
            for group in _siblings(model.graph):
                _fuse(model.graph, group)
                counts[f"fuse.{group[0].op_type}x{len(group)}"] += 1
            per_graph[gname] = dict(counts)
        return next(iter(per_graph.values()), {})

    def ensures(self, graph, ctx):
        for gname, model in graph.models.items():
            if _siblings(model.graph):
                raise PostconditionError(f"fusable sibling matmuls remain in the {gname} graph")

