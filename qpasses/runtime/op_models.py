"""One-node ONNX models of the qpasses ops with quantized random weights: what the kernel tests,
the fuzzer and `qpasses doctor` run against the numpy reference (qpasses.runtime.reference)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qpasses.domain import DOMAIN, DOMAIN_VERSION
from qpasses.formats import WeightFormat, pack_mxfp4, quantize_weight
from qpasses.formats.packing import pack_int_blocked
from qpasses.runtime.ops import INPUTS, OpConfig


def random_weights(cfg: OpConfig, rng: np.random.Generator, zero_points: bool = False) -> dict[str, np.ndarray]:
    """Quantized random weights for cfg, as the op's named inputs (B, E | scales[, zero_points])."""
    w = (rng.standard_normal((cfg.N, cfg.K)) * rng.uniform(0.01, 1.0, (cfg.N, 1))).astype(np.float32)
    if cfg.mxfp4:
        b, e = pack_mxfp4(quantize_weight(w, WeightFormat("mxfp4", 32)))
        return {"B": b, "E": e}
    block = 0 if cfg.block_size == cfg.K else cfg.block_size
    packed = pack_int_blocked(quantize_weight(w, WeightFormat("int4", block, symmetric=not zero_points)))
    out = {"B": packed["B"], "scales": packed["scales"].reshape(cfg.N, -1)}
    if zero_points:
        out["zero_points"] = packed["zero_points"]
    return out


def op_model(cfg: OpConfig, inputs: dict[str, np.ndarray], a_shape: tuple, constant: bool = True,
             **extra_attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model computing Y = op(A, **inputs); weights as initializers (constant) or graph inputs.
    Returns (model, feeds)."""
    names = INPUTS[cfg.op]
    present = [n for n in names if n == "A" or n in inputs]
    last = max(names.index(n) for n in present)
    node_inputs = [n if n in present else "" for n in names[: last + 1]]
    attrs = cfg.attributes(lowrank="L" in inputs, signs="D" in inputs) | extra_attrs
    node = helper.make_node(cfg.op, node_inputs, ["Y"], domain=DOMAIN, **attrs)
    graph_inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, list(a_shape))]
    feeds, inits = {}, []
    for name, value in inputs.items():
        if constant:
            inits.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
            feeds[name] = value
    graph = helper.make_graph([node], "op", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*a_shape[:-1], cfg.N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = 10
    return model, feeds
