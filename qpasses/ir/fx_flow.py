"""Where an orthogonal change of basis can travel through a torch program, found by propagation.

Folding a rotation into weights is exact only if every op the rotated tensor meets commutes with
it. Nothing here recognizes modules by name: each analysis follows a tensor forward from where a
rotation would start and checks every use against a short table of ops known to commute; any
other use ends the analysis, and `residual_stream` names it in its error.

Residual stream, rotation R on the hidden dim (docs/methods.md#residual-rotation):
    embedding(E R, ids)     = embedding(E, ids) R       the table writes the stream
    x (Rᵀ W)ᵀ + b R         = (x Wᵀ + b) R              a writer: linear output added into it
    a R + b R               = (a + b) R
    mean((x R)², -1)        = mean(x², -1)              R orthogonal: ||x R|| = ||x||
    (x R) · s               = (x · s) R                 s a scalar per token (or a constant)
    (x R)(W R)ᵀ             = x Wᵀ                      a reader
Head blocks, rotation I ⊗ R2 on the head dim (docs/methods.md#head-rotation): reshapes that keep
head_dim-wide chunks whole, transposes, slices, expands and cats of the other dims, and attention's
P · V (it mixes tokens only) commute; o_proj reads x (I ⊗ R2) with W (I ⊗ R2), v_proj writes
with (I ⊗ R2)ᵀ W.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from qpasses.errors import PreconditionError
from qpasses.ir.fx_edit import non_meta_users, parameter_of

aten = torch.ops.aten
ASSERT = aten._assert_tensor_metadata.default
SAME = {aten.to.dtype, aten.clone.default, aten.alias.default, aten.contiguous.default}
LINEAR = aten.linear.default
VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _rank(node: torch.fx.Node) -> int:
    return node.meta["val"].dim()


def _last(node: torch.fx.Node) -> int:
    return int(node.meta["val"].shape[-1])


def is_last(dim: int, rank: int) -> bool:
    return dim % rank == rank - 1


def float_cast(node: torch.fx.Node) -> bool:
    return node.target is not aten.to.dtype or node.args[1] == torch.float32


@dataclass
class Stream:
    """The residual stream of one program: what writes it and what reads it."""

    width: int
    tables: list[str] = field(default_factory=list)  # embedding tables (parameter keys)
    writers: list[torch.fx.Node] = field(default_factory=list)  # linear nodes adding into the stream
    readers: list[torch.fx.Node] = field(default_factory=list)  # linear nodes reading it (through norms)


def residual_stream(ep: ExportedProgram) -> Stream:
    """Follow the embedding output through the program; raise when a use does not commute."""
    state: dict[torch.fx.Node, str] = {}  # "R" rotated, "SQ" its square, "I" invariant per token
    stream: Stream | None = None
    for node in ep.graph.nodes:
        if node.op == "output":
            leaked = [a for a in node.all_input_nodes if a in state]
            if leaked:
                raise PreconditionError(f"the residual stream reaches the program output ({leaked[0].name}) "
                                        f"without a reading linear, so a rotation cannot be folded")
            continue
        if node.op != "call_function":
            continue
        if node.target is aten.embedding.default and parameter_of(ep, node.args[0]):
            table = ep.state_dict[parameter_of(ep, node.args[0])]
            stream = stream or Stream(width=int(table.shape[1]))
            stream.tables.append(parameter_of(ep, node.args[0]))
            state[node] = "R"
            continue
        if node.target is ASSERT or not any(a in state for a in node.all_input_nodes):
            continue
        new = _residual_rule(ep, node, state, stream)
        if new is None:
            raise PreconditionError(_why(ep, node, state))
        if new != "reader":
            state[node] = new
    if stream is None:
        raise PreconditionError("no embedding lookup of a parameter table starts a residual stream in this program")
    return stream


def _residual_rule(ep, node, state, stream) -> str | None:
    t, args = node.target, node.args
    s = [state.get(a) if isinstance(a, torch.fx.Node) else None for a in args]
    if (t in SAME and float_cast(node)) or token_op(node):
        return s[0]
    if t is aten.pow.Tensor_Scalar and s[0] == "R" and args[1] == 2:
        return "SQ"
    if t is aten.mean.dim and s[0] == "SQ" and len(args[1]) == 1 and is_last(args[1][0], _rank(args[0])) \
            and (args[2] if len(args) > 2 else node.kwargs.get("keepdim")):
        return "I"
    if t is aten.rsqrt.default and s[0] == "I":
        return "I"
    if t is aten.add.Tensor:
        if sorted(map(str, s)) == ["I", "None"] and not isinstance(args[1 - s.index("I")], torch.fx.Node):
            return "I"
        if s == ["R", "R"]:
            return "R"
        other = args[s.index(None)] if s.count("R") == 1 and None in s else None
        if isinstance(other, torch.fx.Node) and other.target is LINEAR and non_meta_users(other) == [node]:
            stream.writers.append(other)
            return "R"
    if t is aten.mul.Tensor and "R" in s:
        other = args[1 - s.index("R")]
        if s.count("I") == 1 or isinstance(other, (int, float)) or _all_ones(ep, other):
            return "R"
    if t is LINEAR and s[0] == "R" and parameter_of(ep, args[1]) and s[1:].count("R") == 0:
        stream.readers.append(node)
        return "reader"
    return None


def token_op(node) -> bool:
    """An op that selects or regroups tokens and leaves each token's channels as they are: a slice on
    any dim but the last (the lm_head's `hidden[:, -k:]`), a view keeping the last dim (GPT-2's
    [B·S, H] <-> [B, S, H])."""
    if node.target is aten.slice.Tensor:
        return not is_last(node.args[1], _rank(node.args[0]))
    return node.target in VIEWS and str(node.meta["val"].shape[-1]) == str(node.args[0].meta["val"].shape[-1])


def linear_readers(node) -> list[torch.fx.Node] | None:
    """The linears reading `node` as input through float casts and token slices only, or None
    when anything else reads it."""
    found = []
    for u in non_meta_users(node):
        if u.target is LINEAR and u.args[0] is node:
            found.append(u)
        elif (u.target in SAME and float_cast(u)) or token_op(u):
            more = linear_readers(u)
            if more is None:
                return None
            found += more
        else:
            return None
    return found or None


def _all_ones(ep, node) -> bool:
    key = parameter_of(ep, node)
    return key is not None and bool((ep.state_dict[key] == 1).all())


def _why(ep, node, state) -> str:
    hint = ""
    if node.target is aten.mul.Tensor and any(parameter_of(ep, a) for a in node.args):
        hint = ": a norm scale that is not 1 (run fold_norms first)"
    return (f"the residual stream meets {node.name} = {node.target}, which does not commute with a rotation"
            f"{hint}; rotations fold only into pre-norm transformers whose norms are plain RMS normalization")


@dataclass
class HeadPath:
    """A linear whose output travels head-blocked into attention's values (v_proj) and the
    linears that read the attention output (o_proj)."""

    writer: torch.fx.Node
    readers: list[torch.fx.Node]
    head_dim: int


_SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def head_paths(ep: ExportedProgram) -> list[HeadPath]:
    """Every value projection of the program with its output projections."""
    paths = []
    for node in ep.graph.find_nodes(op="call_function", target=LINEAR):
        path = _follow_heads(ep, node)
        if path is not None:
            paths.append(path)
    return paths


def _follow_heads(ep, start) -> HeadPath | None:
    users = non_meta_users(start)
    if len(users) != 1 or users[0].target not in _SHAPE_OPS or _rank(users[0]) != 4:
        return None
    hd = _last(users[0])
    flow, readers, attended = {start}, [], False
    order = {n: i for i, n in enumerate(ep.graph.nodes)}
    todo = [start]
    while todo:
        x = todo.pop()
        for u in non_meta_users(x):
            verdict = _head_rule(u, x, hd, flow)
            if verdict is None:
                return None
            if verdict == "reader":
                readers.append(u)
            elif verdict != "output" and u not in flow:
                attended |= verdict == "attention"
                flow.add(u)
                todo.append(u)
    if not readers or not attended:
        return None
    return HeadPath(start, sorted(set(readers), key=order.get), hd)


def _head_rule(u, x, hd, flow) -> str | None:
    t, args = u.target, u.args
    if u.op == "output":
        return "output"  # the KV cache: it holds V in the rotated basis, read back by the same graph
    if t in _SHAPE_OPS:
        return "flow" if _last(x) % hd == 0 and _last(u) % hd == 0 else None
    if t in SAME and float_cast(u):
        return "flow"
    if t is aten.transpose.int:
        r = _rank(x)
        return None if is_last(args[1], r) or is_last(args[2], r) else "flow"
    if t is aten.unsqueeze.default:
        return None if is_last(args[1], _rank(u)) else "flow"
    if t is aten.slice.Tensor:
        return None if is_last(args[1], _rank(x)) else "flow"
    if t is aten.expand.default:
        return "flow" if _last(u) == _last(x) else None
    if t is aten.cat.default:
        others = [a for a in args[0] if a is not x and a not in flow]
        ok = all(map(_cache_state, others)) and not is_last(args[1] if len(args) > 1 else 0, _rank(u))
        return "flow" if ok else None
    if t is aten.scaled_dot_product_attention.default:
        return "attention" if args[2] is x and args[0] is not x and args[1] is not x else None
    if t is aten.matmul.default:
        return "attention" if args[1] is x and args[0] is not x else None
    if t is LINEAR and args[0] is x:
        return "reader"
    return None


_CACHE_OPS = {aten.detach_.default, aten.detach.default, aten.lift_fresh_copy.default, aten.cat.default}


def _cache_state(node) -> bool:
    """True for a program input (the past KV cache) or a constant, possibly copied and concatenated."""
    if node.op == "placeholder":
        return True
    return node.target in _CACHE_OPS and all(map(_cache_state, node.all_input_nodes))


def _norm_scale(node) -> bool:
    """A norm's scale: a parameter γ, or Gemma's 1 + γ."""
    if isinstance(node, torch.fx.Node) and node.target is aten.add.Tensor and 1 in node.args:
        node = skip_casts(next(a for a in node.args if isinstance(a, torch.fx.Node)))
    return isinstance(node, torch.fx.Node) and node.op == "placeholder"


def norm_output(node) -> bool:
    """True when `node` is an RMS normalization's output: x · rsqrt(mean(x², -1) + eps), possibly
    cast (Gemma: type_as the input) and scaled by a 1-D parameter γ (Gemma: 1 + γ), or a LayerNorm's
    (aten.layer_norm)."""
    node = skip_casts(node)
    if node.target is aten.type_as.default:
        node = skip_casts(node.args[0])
    if node.target is aten.mul.Tensor:
        for a, b in (node.args, node.args[::-1]):
            if _norm_scale(b) and isinstance(a, torch.fx.Node):
                node = skip_casts(a)
                break
    if node.target is aten.layer_norm.default:
        return True
    if node.target is not aten.mul.Tensor:
        return False
    return any(isinstance(a, torch.fx.Node) and a.target is aten.rsqrt.default for a in node.args)


def skip_casts(node):
    while isinstance(node, torch.fx.Node) and (node.target in SAME or token_op(node)):
        node = node.args[0]
    return node
