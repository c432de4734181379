"""Stage B: one or more onnx_ir models (the logits graph and the KV-cache decoder graph) that
share weight names, seen as linear sites.

A linear site is found by pattern, never by module name: `MatMul(x, Transpose(W))` (our export,
W[N, K] named like the torch parameter), `MatMul(x, W)` (other exporters, W[K, N] constant) or
`Gemm(x, W, transB)`. The same weight name in both graphs is one site.

The lm_head is found the same way: the linear whose output is the graph's logits, directly or
through shape-only ops (Reshape, Identity, Cast, ...), gets the role "lm_head", which ignore
patterns and overrides match as well as its names (`TensorSite.matches`). The logits are the
output named `logits`, else the graph's only floating-point output when the linear's N is the row
count of an embedding table (the vocabulary). Site names never change: in our own export the
lm_head is already called `lm_head`.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from qpasses.domain import DOMAIN, DOMAIN_VERSION, QUANT_ACT
from qpasses.errors import PostconditionError
from qpasses.formats.spec import ActFormat
from qpasses.ir import onnx_ops  # noqa: F401  (registers the QuantizeActivation schema)
from qpasses.ir.sites import ROTATION_PREFIX, LinearSite, TensorSite

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
LM_HEAD = "lm_head"
LOGITS = "logits"
SHAPE_ONLY = frozenset({"Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten"})
FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def const_2d(v: ir.Value | None) -> ir.Value | None:
    """v if it is a 2-D constant (initializer with data), else None."""
    if v is None or v.const_value is None or not v.is_initializer() or len(v.const_value.shape) != 2:
        return None
    return v


@dataclass
class Use:
    """One occurrence of a site: the matmul node, its weight initializer and how W is laid out."""

    graph: ir.Graph
    node: ir.Node
    w: ir.Value
    layout: str  # "nk": W[N, K] (Transpose or Gemm transB=1); "kn": W[K, N]


def find_uses(graph: ir.Graph) -> list[Use]:
    uses = []
    for node in graph:
        if node.domain != "" or len(node.inputs) < 2:
            continue
        b = node.inputs[1]
        if node.op_type == "MatMul":
            prod = b.producer() if b is not None else None
            if prod is not None and prod.op_type == "Transpose" and const_2d(prod.inputs[0]) is not None:
                perm = prod.attributes.get_ints("perm", None)
                if perm is None or list(perm) == [1, 0]:
                    uses.append(Use(graph, node, prod.inputs[0], "nk"))
            elif const_2d(b) is not None:
                uses.append(Use(graph, node, b, "kn"))
        elif node.op_type == "Gemm" and const_2d(b) is not None and not node.attributes.get_int("transA", 0):
            uses.append(Use(graph, node, b, "nk" if node.attributes.get_int("transB", 0) else "kn"))
    return uses


def logits_outputs(graph: ir.Graph) -> tuple[list[ir.Value], set[int] | None]:
    """(outputs, vocab): the output named `logits` (any N will do: vocab None), else the only
    floating-point output with the row counts of the graph's embedding tables (constant 2-D Gathers
    along axis 0), one of which a linear's N must be."""
    named = [v for v in graph.outputs if v.name == LOGITS]
    if named:
        return named, None
    floats = [v for v in graph.outputs if v.dtype in FLOAT_DTYPES]
    if len(floats) != 1:
        return [], set()
    vocab = {w.const_value.shape[0] for node in graph
             if node.op_type == "Gather" and node.domain == "" and node.attributes.get_int("axis", 0) == 0
             for w in [const_2d(node.inputs[0])] if w is not None}
    return floats, vocab


def makes_logits(use: Use, outputs: list[ir.Value], vocab: set[int] | None) -> bool:
    """True when the use's matmul output is one of `outputs`, through shape-only ops at most."""
    if vocab is not None and use.w.const_value.shape[0 if use.layout == "nk" else 1] not in vocab:
        return False
    frontier = [use.node.outputs[0]]
    while frontier:
        v = frontier.pop()
        if any(v is t for t in outputs):
            return True
        frontier += [user.outputs[0] for user, _ in v.uses()
                     if user.op_type in SHAPE_ONLY and user.domain == "" and user.outputs]
    return False


def scope_name(node: ir.Node, prefix: str) -> str | None:
    """Module path from the torch exporter's name-scope metadata, without the wrapper prefix."""
    raw = node.metadata_props.get(SCOPES_KEY)
    if not raw:
        return None
    scopes = [s for s in ast.literal_eval(raw) if s]
    if len(scopes) < 2:
        return None
    name = scopes[-2]
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


class OnnxSite(LinearSite):
    def __init__(self, weight_name: str, uses: list[Use], name: str, role: str | None = None):
        self.weight_name, self.uses, self.name, self.role = weight_name, uses, name, role

    def weight(self) -> np.ndarray:
        u = self.uses[0]
        w = u.w.const_value.numpy().astype(np.float32, copy=False)
        return w if u.layout == "nk" else w.T

    def set_weight(self, w: np.ndarray) -> None:
        for u in self.uses:
            data = np.ascontiguousarray(w if u.layout == "nk" else w.T, dtype=np.float32)
            u.w.const_value = ir.Tensor(data, name=u.w.name)

    def bias(self) -> np.ndarray | None:
        u = self.uses[0]
        if u.node.op_type == "Gemm" and len(u.node.inputs) > 2 and u.node.inputs[2] is not None:
            c = u.node.inputs[2].const_value
            return None if c is None else c.numpy().astype(np.float32)
        return None

    def quantize_input(self, fmt: ActFormat) -> None:
        for u in self.uses:
            x = u.node.inputs[0]
            q = ir.node(QUANT_ACT, [x], attributes={"kind": fmt.kind, "block_size": fmt.block_size},
                        domain=DOMAIN, name=f"{self.name}/quant_act")
            q.outputs[0].name = f"{self.name}.quant_act"
            u.graph.insert_before(u.node, q)
            u.node.replace_input_with(0, q.outputs[0])
            u.graph.opset_imports[DOMAIN] = DOMAIN_VERSION


class OnnxTable(TensorSite):
    """An embedding table: Gather(W[V, H], ids) along axis 0."""

    def __init__(self, weight_name: str, values: list[ir.Value], name: str):
        self.weight_name, self.values, self.name = weight_name, values, name

    def weight(self) -> np.ndarray:
        return self.values[0].const_value.numpy().astype(np.float32, copy=False)

    def set_weight(self, w: np.ndarray) -> None:
        for v in self.values:
            v.const_value = ir.Tensor(np.ascontiguousarray(w, dtype=np.float32), name=v.name)


class OnnxStage:
    """The ONNX graph stage. `models` maps a graph name ("logits", "decoder") to its onnx_ir model."""

    stage = "onnx"

    def __init__(self, models: dict[str, ir.Model], scope_prefix: str = ""):
        self.models = models
        self.scope_prefix = scope_prefix
        self.log: list[str] = []

    @property
    def graph_count(self) -> int:
        return len(self.models)

    def sites(self) -> list[OnnxSite]:
        by_weight: dict[str, list[Use]] = {}
        logits: dict[int, tuple[list[ir.Value], set[int] | None]] = {}
        for model in self.models.values():
            logits[id(model.graph)] = logits_outputs(model.graph)
            for use in find_uses(model.graph):
                by_weight.setdefault(use.w.name, []).append(use)
        sites = []
        for wname, uses in by_weight.items():
            if wname.startswith(ROTATION_PREFIX):
                continue
            name = scope_name(uses[0].node, self.scope_prefix) or wname.removesuffix(".weight")
            head = any(makes_logits(u, *logits[id(u.graph)]) for u in uses)
            sites.append(OnnxSite(wname, uses, name, LM_HEAD if head else None))
        return sites

    def embedding_sites(self) -> list[OnnxTable]:
        by_weight: dict[str, tuple[list[ir.Value], ir.Node]] = {}
        for model in self.models.values():
            for node in model.graph:
                if node.op_type == "Gather" and node.domain == "" and node.attributes.get_int("axis", 0) == 0:
                    w = const_2d(node.inputs[0])
                    if w is not None:
                        by_weight.setdefault(w.name, ([], node))[0].append(w)
        return [OnnxTable(name, values, scope_name(node, self.scope_prefix) or name.removesuffix(".weight"))
                for name, (values, node) in by_weight.items()]

    def verify(self) -> None:
        """Every node input is a graph input, an initializer or the output of an earlier node."""
        for gname, model in self.models.items():
            g = model.graph
            known = set(g.inputs) | set(g.initializers.values())
            for node in g:
                for v in node.inputs:
                    if v is not None and v not in known:
                        raise PostconditionError(f"{gname} graph: {node.op_type} node {node.name} reads "
                                                 f"{v.name}, which nothing produces before it")
                known.update(node.outputs)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for gname, model in sorted(self.models.items()):
            h.update(gname.encode())
            for node in model.graph:
                h.update(f"{node.op_type}{[i.name if i else '' for i in node.inputs]}".encode())
            for name, v in sorted(model.graph.initializers.items()):
                h.update(name.encode())
                if v.const_value is not None and v.const_value.size > 1024:
                    h.update(v.const_value.tobytes()[:4096])
        return h.hexdigest()[:16]

    def dump(self) -> str:
        lines = []
        for gname, model in self.models.items():
            ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph)
            lines.append(f"== {gname}: {sum(ops.values())} nodes: "
                         + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
            for n in model.graph:
                ins = ", ".join(i.name if i is not None else "" for i in n.inputs)
                outs = ", ".join(o.name for o in n.outputs)
                lines.append(f"{outs} = {n.domain + '.' if n.domain else ''}{n.op_type}({ins})")
        lines.append("== sites")
        lines += [s.describe() for s in self.sites()]
        return "\n".join(lines) + "\n"
