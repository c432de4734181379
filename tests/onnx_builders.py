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
