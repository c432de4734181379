"""Fuse the decoder graph's exported attention into com.microsoft RotaryEmbedding (q, k) +
GroupQueryAttention.

The exported step graph rebuilds the whole cache every token (Concat with the past, Expand to
repeat the KV heads, two MatMuls, Softmax, rotary as Slice/Neg/Concat/Mul/Add): ~35 nodes per
layer, three after the rewrite.

Identity relied on: for q, k, v = the projections [B, S, H·D], the cache past_k / past_v
[B, Hkv, P, D], mask = the graph's additive attention mask [B, 1, S, P+S], p = position_ids and
rope(x) = a·(x·cos(p·f) + rotate_half(x)·sin(p·f)) = RotaryEmbedding(x, p, a·cos_cache, a·sin_cache)
(a: YaRN's attention factor, else 1; a partial rotary rotates the first r channels,
Concat(rope(x[..., :r]), x[..., r:]) = RotaryEmbedding(.., rotary_embedding_dim = r)),
  softmax(cap(scale · rope(q) · repeat(concat(past_k, rope(k)))ᵀ) + mask) · repeat(concat(past_v, v))
  == GroupQueryAttention(rope(q), rope(k), v, past_k, past_v, seqlens_k = P+S−1, total = P+S,
                         attention_bias = mask, softcap = c)
with the new cache as its 2nd and 3rd outputs, cap(x) = c·tanh(x / c) (Gemma 2's attention logit
soft-capping; GQA caps before it adds the bias) or the identity (softcap 0). It agrees to float
rounding (tests/export: greedy decoding with a left-padded row against the torch model).

A per-head op between a projection and the rotary (Gemma 3's q / k RMSNorm over the head size)
stays: its [B, H, S, D] output goes back to [B, S, H·D] (Transpose, Reshape). A sliding window
(Mistral, Gemma 2 / 3's local layers) is in the mask, so it needs nothing here; GQA's
local_window_size stays unset (ORT versions differ on whether it counts the query's own key).
Layers with different rotary frequencies (Gemma 3: a local base for sliding layers) get one
cos/sin table each.

The pattern is the attention's fixed tail, out = Reshape(Transpose(MatMul(probs, v))); the check
walks the rest (a chain of no-op Identity / Cast nodes, repeat_kv's optional shape nodes, the
rotary subgraphs: parts of varying length that one pattern cannot spell) and fails with the reason
for a site of any other shape. The rewrite re-points the graph's cache outputs at the fused node's
(the concatenated caches are graph outputs, read outside the matched tail). Sites share one cos/sin
table pair per distinct rotary and one pair of sequence lengths per graph (`Tables`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from qpasses.rules.base import NoMatch, constant, fail, producer

MS = "com.microsoft"


def _const(v: ir.Value) -> np.ndarray:
    c = constant(v)
    if c is None:
        raise NoMatch(f"{v.name} is not a constant")
    return c


def _through(v: ir.Value, ops=("Reshape", "Expand", "Unsqueeze")) -> ir.Value:
    """Walk up from v through repeat_kv's shape-only nodes."""
    while (p := v.producer()) is not None and p.op_type in ops and p.domain == "":
        v = p.inputs[0]
    return v


def _softmax(probs: ir.Value) -> ir.Node:
    """probs = (Identity | Cast)*(Softmax(...)), each read once (the exporter's no-op clone / same-type cast)."""
    v = probs
    while (node := v.producer()) is not None and node.op_type in ("Identity", "Cast") and node.domain == "":
        if len(v.uses()) != 1:
            raise NoMatch(f"{node.name} does not feed exactly one MatMul")
        v = node.inputs[0]
    softmax = producer(v, "Softmax")
    if len(v.uses()) != 1:
        raise NoMatch(f"{softmax.name} does not feed exactly one MatMul")
    return softmax


def _heads(x: ir.Value) -> tuple[ir.Value, bool]:
    """x = Transpose(Reshape(proj, [B, S, -1, D]), [0, 2, 1, 3]) -> (proj [B, S, H·D], True); any other
    x [B, H, S, D] (a per-head op after the transpose, e.g. Gemma 3's q / k norm) -> (x, False)."""
    t = x.producer()
    if t is None or t.op_type != "Transpose" or list(t.attributes.get_ints("perm", [])) != [0, 2, 1, 3]:
        return x, False
    reshape = t.inputs[0].producer()
    return (reshape.inputs[0], True) if reshape is not None and reshape.op_type == "Reshape" else (x, False)


def _softcap(x: ir.Value) -> tuple[ir.Value, float]:
    """x = Mul(Tanh(Div(y, c)), c) -> (y, c) (attention logit soft-capping); any other x -> (x, 0)."""
    mul = x.producer()
    if mul is None or mul.op_type != "Mul" or mul.domain != "" or constant(mul.inputs[1]) is None:
        return x, 0.0
    tanh = mul.inputs[0].producer()
    div = tanh.inputs[0].producer() if tanh is not None and tanh.op_type == "Tanh" else None
    if div is None or div.op_type != "Div" or constant(div.inputs[1]) is None:
        return x, 0.0
    cap, inner = (float(_const(v).reshape(())) for v in (mul.inputs[1], div.inputs[1]))
    if cap != inner:
        raise NoMatch(f"{mul.name} caps at {cap} but divides by {inner}: not c·tanh(x / c)")
    return div.inputs[0], cap


def _rope(x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """x = Add(Mul(h, cos), Mul(Concat(Neg(h_hi), h_lo), sin)) -> (h, cos, sin); a partial rotary
    x = Concat(rope(h[..., :r]), h[..., r:]) -> (h, cos, sin) with cos [.., r/2]."""
    whole = _partial(x)
    add = producer(x if whole is None else x.producer().inputs[0], "Add")
    left, right = (producer(v, "Mul") for v in add.inputs)
    h, cos = left.inputs
    cat = producer(right.inputs[0], "Concat")
    producer(cat.inputs[0], "Neg")
    if whole is not None and _last_slice(h) != (whole[0], 0, whole[1]):
        raise NoMatch(f"{x.name}: the rotated part is not the first channels of what the rest is sliced from")
    h = h if whole is None else whole[0]
    return h, producer(cos, "Unsqueeze").inputs[0], producer(right.inputs[1], "Unsqueeze").inputs[0]


def _last_slice(v: ir.Value) -> tuple[ir.Value, int, int] | None:
    """(data, start, end) when v = Slice(data, start, end) on the last axis, step 1; else None."""
    node = v.producer()
    if node is None or node.op_type != "Slice" or node.domain != "" or len(node.inputs) < 4:
        return None
    parts = [_scalar(a) if a is not None else np.ones(1, np.int64) for a in (*node.inputs[1:5], None)[:4]]
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if any(p is None or p.size != 1 for p in parts) or rank is None:
        return None
    start, end, axis, step = (int(p.reshape(())) for p in parts)
    return (node.inputs[0], start, end) if axis % rank == rank - 1 and step == 1 else None


def _scalar(v: ir.Value) -> np.ndarray | None:
    """A constant, or a constant reshaped (the exporter writes Slice's starts as Reshape(c, [-1]))."""
    node = v.producer()
    return constant(node.inputs[0]) if node is not None and node.op_type == "Reshape" else constant(v)


def _partial(x: ir.Value) -> tuple[ir.Value, int] | None:
    """(h, r) when x = Concat(rotated, h[..., r:]) on the last axis (a partial rotary); else None."""
    cat = x.producer()
    if cat is None or cat.op_type != "Concat" or len(cat.inputs) != 2 or cat.attributes.get_int("axis") not in (-1, 3):
        return None
    rest = _last_slice(cat.inputs[1])
    return (rest[0], rest[1]) if rest is not None and rest[1] > 0 else None


def _rotary(cos: ir.Value) -> Rotary:
    """cos = [Mul(a,] Cos(Concat(f, f)) [)], f = Mul(positions, inv_freq) -> Rotary(inv_freq [D/2], a).

    a is the attention factor of rope_scaling "yarn" (1 when absent): it scales q and k, so it scales
    the tables (a·cos, a·sin). What one table cannot hold fails with its reason: frequencies computed
    from the positions ("longrope"'s short / long switch, "dynamic")."""
    factor, node = 1.0, cos.producer()
    if node is not None and node.op_type == "Mul" and node.domain == "":
        scales = [constant(v) for v in node.inputs if constant(v) is not None]
        if len(scales) != 1 or scales[0].size != 1:
            raise NoMatch("the rotary cos/sin are scaled by something other than one constant")
        factor = float(scales[0].reshape(()))
        cos = next(v for v in node.inputs if constant(v) is None)
    cat = producer(producer(cos, "Cos").inputs[0], "Concat")
    mul = producer(cat.inputs[0], "Mul")
    consts = [v for v in mul.inputs if constant(v) is not None]
    if len(consts) != 1:
        raise NoMatch("the rotary frequencies are not one constant (they change with the position, e.g. "
                      "rope_scaling longrope or dynamic): one cos/sin table cannot represent them")
    return Rotary(_const(consts[0]).reshape(-1).astype(np.float32), factor)


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


@dataclass(frozen=True)
class Rotary:
    inv_freq: np.ndarray  # [head_dim / 2]
    factor: float  # multiplies cos and sin (YaRN's attention factor; 1 otherwise)


@dataclass
class Site:
    heads: int
    q: ir.Value  # [B, S, H·D], or [B, H, S, D] when a per-head op precedes the rotary (flat: False)
    k: ir.Value
    v: ir.Value
    past_k: ir.Value
    past_v: ir.Value
    present_k: ir.Value
    present_v: ir.Value
    mask: ir.Value
    scale: float
    softcap: float
    rotary: Rotary
    flat: tuple[bool, bool, bool]  # q, k, v given as [B, S, H·D]


def match(softmax: ir.Node, v_rep: ir.Value, graph: ir.Graph) -> Site:
    """The attention site of `softmax` whose output is MatMul(softmax, v_rep), or NoMatch with the reason."""
    add = producer(softmax.inputs[0], "Add")
    capped, mask = add.inputs
    scaled, softcap = _softcap(capped)
    mul = producer(scaled, "Mul")
    scale = float(_const(mul.inputs[1]).reshape(()))
    qk = producer(mul.inputs[0], "MatMul")
    q_rot, kt = qk.inputs
    present_k = _through(producer(kt, "Transpose").inputs[0])
    present_v = _through(v_rep)
    cat_k, cat_v = producer(present_k, "Concat"), producer(present_v, "Concat")
    past_k, k_rot = cat_k.inputs
    past_v, v_heads = cat_v.inputs
    if past_k not in graph.inputs or past_v not in graph.inputs:
        raise NoMatch("the cache is not a graph input")
    if present_k not in graph.outputs or present_v not in graph.outputs:
        raise NoMatch("the new cache is not a graph output")
    q_heads, cos, _sin = _rope(q_rot)
    k_heads, _, _ = _rope(k_rot)
    (q, flat_q), (k, flat_k), (v, flat_v) = (_heads(x) for x in (q_heads, k_heads, v_heads))
    heads = _width(q) // past_k.shape[3] if flat_q else q.shape[1] if q.shape is not None else None
    if not isinstance(heads, int):
        raise NoMatch(f"the head count of {q.name} is not known")
    return Site(heads, q, k, v, past_k, past_v, present_k, present_v, mask, scale, softcap, _rotary(cos),
                (flat_q, flat_k, flat_v))


def _shared(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    if name not in graph.initializers:
        graph.register_initializer(ir.Value(name=name, const_value=ir.tensor(array, name=name)))
    return graph.initializers[name]


class Tables:
    """What every fused site of one graph reads: rotary cos/sin tables of `max_positions` rows
    (RotaryEmbedding refuses a position_ids value from max_positions on), one pair per distinct
    rotary (Gemma 3's local and global layers differ), position_ids, and the sequence lengths;
    built at the first rewrite that needs them."""

    def __init__(self, graph: ir.Graph, max_positions: int):
        self.graph, self.max_positions = graph, max_positions
        self.pairs: dict[tuple[bytes, float], tuple[ir.Value, ir.Value]] = {}
        self.values: tuple[ir.Value, ...] = ()

    def get(self, rotary: Rotary) -> tuple[ir.Value, ...]:
        """(cos, sin, position_ids, seqlens_k, total_sequence_length)."""
        g, key = self.graph, (rotary.inv_freq.tobytes(), rotary.factor)
        if key not in self.pairs:
            # the first pair keeps the plain names; a Gemma 3 local table is qpasses.rope.cos.1, ...
            suffix = f".{len(self.pairs)}" if self.pairs else ""
            freqs = np.arange(self.max_positions, dtype=np.float32)[:, None] * rotary.inv_freq[None, :]
            self.pairs[key] = tuple(
                _shared(g, f"qpasses.rope.{name}{suffix}", (np.float32(rotary.factor) * fn(freqs)).astype(np.float32))
                for name, fn in (("cos", np.cos), ("sin", np.sin)))
        if not self.values:  # after the first tables: the initializers keep the order they always had
            self.values = (next(v for v in g.inputs if v.name == "position_ids"), *self._lengths())
        return (*self.pairs[key], *self.values)

    def _lengths(self) -> tuple[ir.Value, ir.Value]:
        """seqlens_k = total - 1 per row (int32 [B]) and total = attention_mask's length (int32 scalar):
        every row spans the whole mask, and the additive mask (attention_bias) removes the padding."""
        g = self.graph
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


class GroupQueryAttentionFusion(RewriteRuleClassBase):
    """Reshape(Transpose(MatMul(softmax(...), repeat(present_v)))) -> GroupQueryAttention(RotaryEmbedding(q), ...)."""

    def __init__(self, tables: Tables):
        super().__init__("fuse.group_query_attention")
        self.tables = tables

    def pattern(self, op, probs, v_rep, shape):
        out = op.MatMul(probs, v_rep)
        return op.Reshape(op.Transpose(out, _allow_other_attributes=True), shape, _allow_other_attributes=True,
                          _outputs=["out"])

    def check(self, context, probs, v_rep, out, **_):
        try:
            softmax = _softmax(probs)
        except NoMatch as e:
            return fail(str(e), out.producer())
        try:
            match(softmax, v_rep, out.graph)
        except NoMatch as e:
            return fail(str(e), softmax)  # the reason names the Softmax that stays
        return MatchResult()

    def rewrite(self, op, probs, v_rep, out, **_):
        site = match(_softmax(probs), v_rep, out.graph)
        cos, sin, positions, seqlens, total = self.tables.get(site.rotary)
        kv_heads = site.past_k.shape[1]
        q, k, v = (x if flat else op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
                   for x, flat in zip((site.q, site.k, site.v), site.flat))
        # Rotary as its own op, at the graph's position_ids (GQA's built-in rotary counts
        # positions from the cache length, which left padding shifts).
        head_size, rotated = site.past_k.shape[3], 2 * site.rotary.inv_freq.size
        partial = {"rotary_embedding_dim": rotated} if rotated < head_size else {}  # the rest passes through
        q, k = (op.RotaryEmbedding(x, positions, cos, sin, _domain=MS, num_heads=n, **partial)
                for x, n in ((q, site.heads), (k, kv_heads)))
        softcap = {"softcap": site.softcap} if site.softcap else {}
        y, present_k, present_v = op.GroupQueryAttention(
            q, k, v, site.past_k, site.past_v, seqlens, total, None, None, None, site.mask, _domain=MS,
            num_heads=site.heads, kv_num_heads=kv_heads, scale=site.scale, **softcap, _outputs=3)
        y.producer().name = f"{out.name}.gqa"
        for old, new in ((site.present_k, present_k), (site.present_v, present_v)):  # the cache outputs
            name, old.name = old.name, None
            new.name, new.shape, new.type = name, old.shape, old.type
            old.replace_all_uses_with(new, replace_graph_outputs=True)
        return y


def rules(graph: ir.Graph, max_positions: int) -> tuple:
    """The rule set for one decoder graph (its sites share one Tables)."""
    return (GroupQueryAttentionFusion.rule(Tables(graph, max_positions)),)
