"""Tiny ONNX graphs built in code for rule and stage tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

OPSET = 21


def linear_model(k: int, n: int, layouts=("nk", "kn"), seed: int = 0, scale: float = 0.1) -> tuple[ir.Model, dict]:
    """x[b, s, K] -> one linear per layout, outputs summed. "nk": MatMul(x, Transpose(W)), "kn": MatMul(x, Wt),
    "gemm" / "gemm_bias": Gemm(transB=1) on a flattened x, without / with a bias. Returns the model and
    {weight name: W[N, K]}."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights, outs = [], [], {}, []
    for i, layout in enumerate(layouts):
        w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
        name = f"layer{i}.{layout}.weight"
        weights[name] = w
        y = f"y{i}"
        if layout == "nk":
            inits.append(numpy_helper.from_array(w, name))
            nodes += [helper.make_node("Transpose", [name], [f"t{i}"], perm=[1, 0]),
                      helper.make_node("MatMul", ["x", f"t{i}"], [y])]
        elif layout == "kn":
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))
            nodes.append(helper.make_node("MatMul", ["x", name], [y]))
        else:
            inits += [numpy_helper.from_array(w, name), numpy_helper.from_array(np.array([-1, k], np.int64), f"s{i}")]
            gemm_in = [f"x2_{i}", name]
            if layout == "gemm_bias":
                inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"bias{i}"))
                gemm_in.append(f"bias{i}")
            nodes += [helper.make_node("Reshape", ["x", f"s{i}"], [f"x2_{i}"]),
                      helper.make_node("Gemm", gemm_in, [f"g{i}"], transB=1),
                      helper.make_node("Reshape", [f"g{i}", "oshape"], [y])]
        outs.append(y)
    if any(layout.startswith("gemm") for layout in layouts):
        nodes.insert(0, helper.make_node("Shape", ["x"], ["xs"], start=0, end=2))
        nodes.insert(1, helper.make_node("Concat", ["xs", "ncol"], ["oshape"], axis=0))
        inits.append(numpy_helper.from_array(np.array([n], np.int64), "ncol"))
    acc = outs[0]
    for i, y in enumerate(outs[1:]):
        nodes.append(helper.make_node("Add", [acc, y], [f"sum{i}"]))
        acc = f"sum{i}"
    nodes.append(helper.make_node("Identity", [acc], ["y"]))
    graph = helper.make_graph(
        nodes, "linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.from_proto(proto), weights


def run_ort(model: ir.Model, feeds: dict, optimization: str = "basic") -> np.ndarray:
    import onnxruntime as ort

    from qpasses.ir import onnx_ops  # noqa: F401  (the qpasses schema must be registered to serialize)
    from qpasses.runtime import library_path

    so = ort.SessionOptions()
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    so.intra_op_num_threads = 1
    so.register_custom_ops_library(str(library_path()))
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def tied_embedding_model(vocab: int, hidden: int, seed: int = 0) -> tuple[ir.Model, np.ndarray]:
    """ids -> Gather(W) -> MatMul(., Transpose(W)): an embedding tied to its lm_head."""
    w = (np.random.default_rng(seed).standard_normal((vocab, hidden)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gather", ["embed.weight", "ids"], ["e"], axis=0),
             helper.make_node("Transpose", ["embed.weight"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["e", "wt"], ["y"])]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", vocab])],
        [numpy_helper.from_array(w, "embed.weight")])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    return ir.from_proto(proto), w


# initializer names of `foreign_lm`'s linears, as the legacy torch.onnx.export names a weight it transposed
FOREIGN_LINEARS = ("onnx::MatMul_101", "onnx::MatMul_102", "onnx::MatMul_103", "onnx::MatMul_104",
                   "onnx::MatMul_105", "onnx::MatMul_106")
FOREIGN_LM_HEAD = "val_451"  # a dynamo export's anonymous name for the lm_head weight


def foreign_lm(vocab: int = 320, hidden: int = 128, ffn: int = 256, seed: int = 0,
               logits_name: str = "logits") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-layer causal LM as other exporters write it: input_ids, attention_mask -> logits.

    Embedding Gather, q/k/v/o and up/down MatMuls on [K, N] initializers with exporter names
    (`FOREIGN_LINEARS`), a causal mask from an unnamed `Constant` holding -inf, a padding mask
    scaled by an unnamed `Constant` holding -3.4e38 (finfo.min, as Hugging Face writes it), a
    no-op clamp by an initializer holding -inf, and the lm_head MatMul on an anonymous initializer
    (`FOREIGN_LM_HEAD`) whose output reaches `logits_name` through an Identity. Returns the model
    and {initializer name: array}."""
    rng = np.random.default_rng(seed)
    shapes = dict(zip(FOREIGN_LINEARS, [(hidden, hidden)] * 4 + [(hidden, ffn), (ffn, hidden)], strict=True))
    shapes |= {FOREIGN_LM_HEAD: (hidden, vocab), "model.embed_tokens.weight": (vocab, hidden)}
    weights = {n: (rng.standard_normal(s) * 0.1).astype(np.float32) for n, s in shapes.items()}
    weights["attn.neg_inf"] = np.array([-np.inf], np.float32)
    q, k, v, o, up, down = FOREIGN_LINEARS

    def const(out, value):  # a Constant node without a name, as the legacy exporter writes them
        return helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.array(value, np.float32)))

    nodes = [
        helper.make_node("Gather", ["model.embed_tokens.weight", "input_ids"], ["h0"], axis=0),
        helper.make_node("MatMul", ["h0", q], ["q"]), helper.make_node("MatMul", ["h0", k], ["k"]),
        helper.make_node("MatMul", ["h0", v], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"]),
        const("scale", [1 / np.sqrt(hidden)]),
        helper.make_node("Mul", ["qk", "scale"], ["s0"]),
        # causal mask: Where(tril(ones[s, s]), 0, -inf)
        helper.make_node("Shape", ["s0"], ["ss"], start=1, end=3),
        helper.make_node("ConstantOfShape", ["ss"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Trilu", ["ones"], ["tril"], upper=0),
        helper.make_node("Cast", ["tril"], ["keep"], to=TensorProto.BOOL),
        const("zero", [0.0]), const("minus_inf", [-np.inf]),
        helper.make_node("Where", ["keep", "zero", "minus_inf"], ["causal"]),
        helper.make_node("Add", ["s0", "causal"], ["s1"]),
        # padding mask: (1 - attention_mask) * finfo.min, broadcast over the query axis
        helper.make_node("Cast", ["attention_mask"], ["am"], to=TensorProto.FLOAT),
        const("one", [1.0]), helper.make_node("Sub", ["one", "am"], ["inv"]),
        const("finfo_min", [-3.4e38]), helper.make_node("Mul", ["inv", "finfo_min"], ["pad0"]),
        helper.make_node("Unsqueeze", ["pad0", "axis1"], ["pad"]),
        helper.make_node("Add", ["s1", "pad"], ["s2"]),
        helper.make_node("Max", ["s2", "attn.neg_inf"], ["s3"]),
        helper.make_node("Softmax", ["s3"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"]), helper.make_node("MatMul", ["a", o], ["ao"]),
        helper.make_node("Add", ["h0", "ao"], ["h1"]),
        helper.make_node("MatMul", ["h1", up], ["u"]), helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("MatMul", ["r", down], ["d"]), helper.make_node("Add", ["h1", "d"], ["h2"]),
        helper.make_node("MatMul", ["h2", FOREIGN_LM_HEAD], ["lm"]),
        helper.make_node("Identity", ["lm"], [logits_name]),
    ]
    inits = [numpy_helper.from_array(w, n) for n, w in weights.items()]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes, "foreign_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(logits_name, TensorProto.FLOAT, ["batch", "seq", vocab])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(proto)
    return onnx.shape_inference.infer_shapes(proto), weights
