"""fuse_attention: the decoder graph's exported attention -> com.microsoft RotaryEmbedding (q, k)
+ GroupQueryAttention.

The exported step graph rebuilds the whole cache every token (Concat with the past, Expand to
repeat the KV heads, two MatMuls, Softmax, rotary as Slice/Neg/Concat/Mul/Add): ~35 nodes per
layer, three after the rewrite.

Identity relied on: for q, k, v = the projections [B, S, H·D], the cache past_k / past_v
[B, Hkv, P, D], mask = the graph's additive attention mask [B, 1, S, P+S], p = position_ids and
rope(x) = x·cos(p·f) + rotate_half(x)·sin(p·f) = RotaryEmbedding(x, p, cos_cache, sin_cache),
  softmax(scale · rope(q) · repeat(concat(past_k, rope(k)))ᵀ + mask) · repeat(concat(past_v, v))
  == GroupQueryAttention(rope(q), rope(k), v, past_k, past_v, seqlens_k = P+S−1, total = P+S,
                         attention_bias = mask)
with the new cache as its 2nd and 3rd outputs. It agrees to float rounding (tests/export: greedy
decoding with a left-padded row against the torch model). Matched structurally from each
Softmax (the subgraph has too many branches for one pattern) on the folded graph; a site of any
other shape is left alone, with the reason in the notes. Stage: onnx, decoder graph only (the
logits graph has no cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from qpasses.errors import LoweringError
from qpasses.ir.cleanup import finalize
from qpasses.passes.base import Pass

MS = "com.microsoft"


@dataclass(frozen=True)
class Settings:
    max_positions: int = 8192  # rows of the rotary cos/sin tables (the model's context length)


class NoMatch(Exception):
    pass


def _producer(v: ir.Value | None, op: str, domain: str = "") -> ir.Node:
    node = v.producer() if v is not None else None
    if node is None or node.op_type != op or node.domain != domain:
        raise NoMatch(f"{v.name if v is not None else 'a missing input'} is not produced by {op}")
    return node


def _const(v: ir.Value) -> np.ndarray:
    t = ir.convenience.get_const_tensor(v)
    if t is None:
        raise NoMatch(f"{v.name} is not a constant")
    return t.numpy()


def _through(v: ir.Value, ops=("Reshape", "Expand", "Unsqueeze")) -> ir.Value:
    """Walk up from v through repeat_kv's shape-only nodes."""
    while (p := v.producer()) is not None and p.op_type in ops and p.domain == "":
        v = p.inputs[0]
    return v


def _only_user(node: ir.Node, op: str, also: tuple[str, ...] = ()) -> ir.Node:
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0][0].op_type not in (op, *also):
        raise NoMatch(f"{node.name} does not feed exactly one {op}")
    return uses[0][0]


def _heads(x: ir.Value) -> ir.Value:
    """x = Transpose(Reshape(proj, [B, S, -1, D]), [0, 2, 1, 3]) -> proj [B, S, H·D]."""
    t = _producer(x, "Transpose")
    if list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        raise NoMatch(f"{t.name} is not the head transpose")
    return _producer(t.inputs[0], "Reshape").inputs[0]


def _rope(x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x = Add(Mul(h, cos), Mul(Concat(Neg(h_hi), h_lo), sin)) -> (h, cos, sin)."""
    add = _producer(x, "Add")
    left, right = (_producer(v, "Mul") for v in add.inputs)
    h, cos = left.inputs
    cat = _producer(right.inputs[0], "Concat")
    _producer(cat.inputs[0], "Neg")
    return h, _producer(cos, "Unsqueeze").inputs[0], _producer(right.inputs[1], "Unsqueeze").inputs[0]


def _inv_freq(cos: ir.Value) -> np.ndarray:
    """cos = Cos(Concat(f, f)), f = Mul(positions, inv_freq) -> inv_freq [D/2]."""
    cat = _producer(_producer(cos, "Cos").inputs[0], "Concat")
    mul = _producer(cat.inputs[0], "Mul")
    consts = [v for v in mul.inputs if ir.convenience.get_const_tensor(v) is not None]
    if len(consts) != 1:
        raise NoMatch("the rotary frequencies are not one constant")
    return _const(consts[0]).reshape(-1).astype(np.float32)


def _width(v: ir.Value) -> int:
    """The static last dimension of a projection output (from its shape, or its producer's N / split sizes)."""
    if v.shape is not None and isinstance(v.shape[-1], int):
        return v.shape[-1]
    node = v.producer()
    if node is not None and node.op_type == "Split":
        return int(_const(node.inputs[1])[list(node.outputs).index(v)])
    if node is not None and "N" in node.attributes:
        return int(node.attributes["N"].value)
    raise NoMatch(f"the width of {v.name} is not known")


@dataclass
class Site:
    heads: int
    q: ir.Value
    k: ir.Value
    v: ir.Value
    past_k: ir.Value
    past_v: ir.Value
    present_k: ir.Value
    present_v: ir.Value
    mask: ir.Value
    scale: float
    inv_freq: np.ndarray
    out: ir.Value  # the attention output [B, S, H·D] that the output projection reads


def match(softmax: ir.Node, graph: ir.Graph) -> Site:
    add = _producer(softmax.inputs[0], "Add")
    scaled, mask = add.inputs
    mul = _producer(scaled, "Mul")
    scale = float(_const(mul.inputs[1]).reshape(()))
    qk = _producer(mul.inputs[0], "MatMul")
    q_rot, kt = qk.inputs
    present_k = _through(_producer(kt, "Transpose").inputs[0])
    pv = softmax
    while pv is softmax or pv.op_type in ("Identity", "Cast"):  # the exporter's no-op clone / same-type cast
        pv = _only_user(pv, "MatMul", also=("Identity", "Cast"))
    present_v = _through(pv.inputs[1])
    cat_k, cat_v = _producer(present_k, "Concat"), _producer(present_v, "Concat")
    past_k, k_rot = cat_k.inputs
    past_v, v_heads = cat_v.inputs
    if past_k not in graph.inputs or past_v not in graph.inputs:
        raise NoMatch("the cache is not a graph input")
    if present_k not in graph.outputs or present_v not in graph.outputs:
        raise NoMatch("the new cache is not a graph output")
    q, cos, _sin = _rope(q_rot)
    k, _, _ = _rope(k_rot)
    out = _only_user(_only_user(pv, "Transpose"), "Reshape").outputs[0]
    q = _heads(q)
    return Site(_width(q) // past_k.shape[3], q, _heads(k), _heads(v_heads), past_k, past_v, present_k, present_v,
                mask, scale, _inv_freq(cos), out)


def _shared(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    if name not in graph.initializers:
        graph.register_initializer(ir.Value(name=name, const_value=ir.tensor(array, name=name)))
    return graph.initializers[name]


class FuseAttention(Pass):
    name = "fuse_attention"
    stages = ("onnx",)
    expects_rewrites = False
    Settings = Settings

    def run(self, graph, ctx):
        model = graph.models.get("decoder")
        if model is None:
            return {}
        finalize(model)  # fold the exporter's shape arithmetic and no-op nodes first (deployment does anyway)
        g = model.graph
        if not {"attention_mask", "position_ids"} <= {v.name for v in g.inputs}:
            return {}
        sites, misses = [], []
        for node in list(g):
            if node.op_type == "Softmax" and node.domain == "":
                try:
                    sites.append(match(node, g))
                except NoMatch as e:
                    misses.append(f"{node.name}: {e}")
        if misses:
            ctx.notes["fuse_attention"] = misses[:3]  # why some attention stayed unfused
        if any(not np.array_equal(site.inv_freq, sites[0].inv_freq) for site in sites):
            raise LoweringError("the layers' rotary frequencies differ; one cos/sin table cannot serve them")
        if not sites:
            return {}
        self._rewrite(g, sites)
        RemoveUnusedNodesPass()(model)
        return {"fuse.group_query_attention": len(sites)}

    def _rewrite(self, g: ir.Graph, sites: list[Site]) -> None:
        kv_heads = sites[0].past_k.shape[1]
        positions = np.arange(self.settings.max_positions, dtype=np.float32)[:, None]
        freqs = positions * sites[0].inv_freq[None, :]
        cos = _shared(g, "qpasses.rope.cos", np.cos(freqs).astype(np.float32))
        sin = _shared(g, "qpasses.rope.sin", np.sin(freqs).astype(np.float32))
        seqlens, total = self._lengths(g)
        pos_in = next(v for v in g.inputs if v.name == "position_ids")
        for site in sites:
            heads = site.heads
            # Rotary as its own op, at the graph's position_ids (GQA's built-in rotary counts
            # positions from the cache length, which left padding shifts).
            q, k = (ir.node("RotaryEmbedding", [x, pos_in, cos, sin], domain=MS, attributes={"num_heads": n})
                    for x, n in ((site.q, heads), (site.k, kv_heads)))
            node = ir.Node(MS, "GroupQueryAttention",
                           [q.outputs[0], k.outputs[0], site.v, site.past_k, site.past_v, seqlens, total, None, None,
                            None, site.mask],
                           attributes=[ir.AttrInt64("num_heads", heads), ir.AttrInt64("kv_num_heads", kv_heads),
                                       ir.AttrFloat32("scale", site.scale)],
                           num_outputs=3, name=f"{site.out.name}.gqa")
            g.insert_after(site.out.producer(), [q, k, node])
            site.out.replace_all_uses_with(node.outputs[0])
            for old, new in ((site.present_k, node.outputs[1]), (site.present_v, node.outputs[2])):
                name, old.name = old.name, None
                new.name, new.shape, new.type = name, old.shape, old.type
                old.replace_all_uses_with(new, replace_graph_outputs=True)

    @staticmethod
    def _lengths(g: ir.Graph) -> tuple[ir.Value, ir.Value]:
        """seqlens_k = total - 1 per row (int32 [B]) and total = attention_mask's length (int32 scalar):
        every row spans the whole mask, and the additive mask (attention_bias) removes the padding."""
        mask = next(v for v in g.inputs if v.name == "attention_mask")
        one = _shared(g, "qpasses.int64.1", np.array(1, np.int64))
        shape = ir.node("Shape", [mask])
        total64 = ir.node("Gather", [shape.outputs[0], one], attributes={"axis": 0})
        batch = ir.node("Shape", [mask], attributes={"start": 0, "end": 1})
        last = ir.node("Sub", [total64.outputs[0], one])
        rows = ir.node("Expand", [last.outputs[0], batch.outputs[0]])
        seqlens = ir.node("Cast", [rows.outputs[0]], attributes={"to": ir.DataType.INT32})
        total = ir.node("Cast", [total64.outputs[0]], attributes={"to": ir.DataType.INT32})
        g.insert_before(next(iter(g)), [shape, total64, batch, last, rows, seqlens, total])
        return seqlens.outputs[0], total.outputs[0]
