"""The oldest onnxruntime that loads and runs a model: `minimum_onnxruntime(model) -> (version, reasons)`.

Computed from a table (data, not code): each row names what a model uses (an op by domain and
type, optionally with attribute values, an input count or an input element type; or the model's
IR version / default-domain opset) and the first onnxruntime release that runs it, with why.
Every row was measured: single-op models and deployed tiny folders loaded and run under the
PyPI wheels 1.16.3 .. 1.23.2 (CPU provider); 1.16 reads no opset 20 model, so "1.17" means
"1.17 or older". A model needs the newest version among the rows it matches. An op the table
does not know counts as needing `NEWEST_CHECKED` (it runs there, the one we build and test with).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from qpasses.domain import DOMAIN, MS_DOMAIN
from qpasses.errors import InputError

NEWEST_CHECKED = "1.32"  # the onnxruntime the project is developed and tested on
METADATA_KEY = "qpasses.onnxruntime_min"
PRESENT = "present"  # an attribute condition that any value satisfies
UINT8, INT4_TYPES = 2, (21, 22)  # TensorProto.UINT8; TensorProto.UINT4, TensorProto.INT4


@dataclass(frozen=True)
class OpRule:
    """A node of `domain`.`op` needs onnxruntime >= `version` when every given condition holds:
    attrs (name -> allowed values, or PRESENT; an absent attribute takes `defaults`), at least
    `min_inputs` inputs (empty placeholders count: the schema checks positions), input
    `dtype[0]`'s element type in `dtype[1]`."""

    domain: str
    op: str
    version: str
    why: str
    attrs: dict = field(default_factory=dict)
    min_inputs: int = 0
    dtype: tuple[int, tuple[int, ...]] | None = None


# Attribute defaults of the schemas, for conditions on an attribute the node leaves out.
DEFAULTS = {(MS_DOMAIN, "MatMulNBits"): {"bits": 4, "accuracy_level": 0}}

OP_RULES = (
    OpRule(DOMAIN, "*", "1.17", "our library asks for ORT API 17 (KernelContext_ParallelFor is the newest call)"),
    OpRule(MS_DOMAIN, "MatMulNBits", "1.17", "4-bit MatMulNBits (any block, zero points, accuracy level) runs on 1.17"),
    OpRule(MS_DOMAIN, "MatMulNBits", "1.22", "8-bit MatMulNBits runs from 1.22 with accuracy_level 4",
           attrs={"bits": (8,)}),
    OpRule(MS_DOMAIN, "MatMulNBits", "1.23", "8-bit MatMulNBits with float activations (accuracy_level < 4) "
           "fails at run time before 1.23", attrs={"bits": (8,), "accuracy_level": (0, 1, 2, 3)}),
    OpRule(MS_DOMAIN, "GatherBlockQuantized", "1.20", "GatherBlockQuantized exists from 1.20 (int4/uint4 data)"),
    OpRule(MS_DOMAIN, "GatherBlockQuantized", "1.22", "GatherBlockQuantized takes uint8 (packed) data from 1.22",
           dtype=(0, (UINT8,))),
    OpRule(MS_DOMAIN, "GatherBlockQuantized", "1.23", "GatherBlockQuantized has the 'bits' attribute (INT8 "
           "tables) from 1.23 (1.21/1.22: Unrecognized attribute: bits)", attrs={"bits": PRESENT}),
    OpRule(MS_DOMAIN, "GroupQueryAttention", "1.18", "GroupQueryAttention on CPU (7 or 9 inputs, "
           "local_window_size, do_rotary) from 1.18"),
    OpRule(MS_DOMAIN, "GroupQueryAttention", "1.19", "GroupQueryAttention's smooth_softmax from 1.19",
           attrs={"smooth_softmax": PRESENT}),
    OpRule(MS_DOMAIN, "GroupQueryAttention", "1.20", "GroupQueryAttention's softcap from 1.20",
           attrs={"softcap": PRESENT}),
    OpRule(MS_DOMAIN, "GroupQueryAttention", "1.22", "GroupQueryAttention's inputs 10-11 (position_ids, "
           "attention_bias) from 1.22 (1.21: input size 11 not in range)", min_inputs=10),
    OpRule(MS_DOMAIN, "RotaryEmbedding", "1.17", "RotaryEmbedding (num_heads, rotary_embedding_dim) runs on 1.17"),
    OpRule(MS_DOMAIN, "SkipSimplifiedLayerNormalization", "1.17",
           "SkipSimplifiedLayerNormalization with its 4th output (the sum) runs on 1.17"),
    OpRule("", "DequantizeLinear", "1.19", "int4/uint4 tensors (blocked DequantizeLinear) from 1.19",
           dtype=(0, INT4_TYPES)),
)
# (first value, version, why): the last row whose first value <= the model's applies.
IR_RULES = ((1, "1.17", "IR version <= 9 reads on 1.17"),
            (10, "1.18", "IR version 10 reads from 1.18"),
            (11, "1.23", "IR version 11 reads from 1.23"),
            (12, NEWEST_CHECKED, f"IR version 12 and newer: checked on {NEWEST_CHECKED} only"))
OPSET_RULES = ((1, "1.17", "default-domain opset <= 20 on 1.17"),
               (21, "1.18", "default-domain opset 21 from 1.18"),
               (22, "1.21", "default-domain opset 22 from 1.21"),
               (23, "1.23", "default-domain opset 23 from 1.23"),
               (24, NEWEST_CHECKED, f"default-domain opset 24 and newer: checked on {NEWEST_CHECKED} only"))


def version_key(version: str) -> tuple[int, ...]:
    """'1.22' -> (1, 22); '1.22.1' -> (1, 22, 1); a suffix such as 'dev' or '+cpu' is dropped."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class NodeView:
    """What the rows look at in one node, the same for an onnx ModelProto and an onnx_ir Model."""

    domain: str
    op_type: str
    attrs: dict
    inputs: int  # how many input positions (empty placeholders included)
    input_types: tuple  # element type per input position (None: empty or unknown)


def minimum_onnxruntime(model) -> tuple[str, list[str]]:
    """The oldest onnxruntime that runs `model` (an onnx ModelProto or an onnx_ir Model) and the
    reasons that set it: the rows that need exactly that version, one line each, without repeats."""
    return combine(_needs(model))


def minimum_onnxruntime_all(models) -> tuple[str, list[str]]:
    """The minimum over several graphs (a folder's): the newest of their minimums."""
    return combine([n for m in models for n in _needs(m)])


def combine(needs: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """(version, why) pairs -> the newest version and the reasons that need exactly it."""
    top = max((v for v, _ in needs), key=version_key)
    return top, list(dict.fromkeys(why for v, why in needs if version_key(v) == version_key(top)))


def record(version: str, reasons: list[str]) -> dict:
    """The manifest's `onnxruntime_min`, and the JSON of the `qpasses.onnxruntime_min` metadata."""
    return {"version": version, "reasons": list(reasons)}


def metadata_minimum(metadata: dict[str, str], where: str) -> str | None:
    """The version of a model's `qpasses.onnxruntime_min` metadata entry (None: it has none)."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        version = json.loads(raw)["version"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"metadata {METADATA_KEY} of {where} is not a JSON object with a 'version': {raw!r}") from None
    if not isinstance(version, str) or not version_key(version):
        raise InputError(f"metadata {METADATA_KEY} of {where} names no version: {raw!r}")
    return version


def check_installed(need: str | None, installed: str, what: str) -> None:
    """Raise InputError when the installed onnxruntime is older than `need` (None: no need known)."""
    if need is not None and version_key(installed) < version_key(need):
        raise InputError(f"{what} needs onnxruntime >= {need}, but {installed} is installed; "
                         f"pip install 'onnxruntime>={need}'")


def _needs(model) -> list[tuple[str, str]]:
    proto = hasattr(model, "opset_import")
    opsets = {o.domain: o.version for o in model.opset_import} if proto else dict(model.opset_imports)
    needs = [_banded(IR_RULES, model.ir_version)]
    opset = opsets.get("", opsets.get("ai.onnx"))
    if opset is not None:
        needs.append(_banded(OPSET_RULES, opset))
    for node in (_proto_nodes(model) if proto else _ir_nodes(model)):
        needs += _node_needs(node)
    return needs

def _banded(rules, value: int) -> tuple[str, str]:
    _, version, why = max((r for r in rules if r[0] <= value), key=lambda r: r[0], default=rules[0])
    return version, why


def _node_needs(node: NodeView) -> list[tuple[str, str]]:
    domain = "" if node.domain == "ai.onnx" else node.domain
    rows = [r for r in OP_RULES if r.domain == domain and r.op in (node.op_type, "*")]
    if not rows:
        if domain in ("", "ai.onnx.ml"):
            return []  # the default domains: the opset rows cover them
        return [(NEWEST_CHECKED, f"{domain}.{node.op_type} is not in the table; checked on {NEWEST_CHECKED} only")]
    defaults = DEFAULTS.get((domain, node.op_type), {})
    return [(r.version, r.why) for r in rows if _matches(r, node, defaults)]


def _matches(rule: OpRule, node: NodeView, defaults: dict) -> bool:
    for name, allowed in rule.attrs.items():
        value = node.attrs.get(name, defaults.get(name))
        if value is None or (allowed != PRESENT and value not in allowed):
            return False
    if node.inputs < rule.min_inputs:
        return False
    if rule.dtype is not None:
        index, allowed_types = rule.dtype
        if index >= node.inputs or node.input_types[index] not in allowed_types:
            return False
    return True


def _proto_nodes(model) -> Iterable[NodeView]:
    """Every node of a ModelProto: the main graph, subgraphs, the model's functions."""
    from onnx import helper

    types = _elem_types(model.graph)

    def walk(nodes):
        for node in nodes:
            yield NodeView(node.domain, node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute},
                           len(node.input), tuple(types.get(n) if n else None for n in node.input))
            for a in node.attribute:
                if a.HasField("g"):
                    yield from walk(a.g.node)
                for g in a.graphs:
                    yield from walk(g.node)

    yield from walk(model.graph.node)
    for f in model.functions:
        yield from walk(f.node)


def _ir_nodes(model) -> Iterable[NodeView]:
    """Every node of an onnx_ir Model (subgraphs included) and of its functions."""
    for graph in (model.graph, *model.functions.values()):
        for node in graph.all_nodes():
            types = tuple(None if v is None or v.dtype is None else int(v.dtype) for v in node.inputs)
            yield NodeView(node.domain, node.op_type, {k: a.value for k, a in node.attributes.items()},
                           len(node.inputs), types)

def _elem_types(graph) -> dict[str, int]:
    """Element type per tensor name, from the initializers, graph inputs and value_info."""
    types = {t.name: t.data_type for t in graph.initializer}
    for v in (*graph.input, *graph.value_info, *graph.output):
        if v.type.HasField("tensor_type"):
            types.setdefault(v.name, v.type.tensor_type.elem_type)
    return types
