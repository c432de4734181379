"""The custom op stage A inserts in front of a linear: activation fake-quantization.

`torch.ops.qpasses.quant_act(x, kind, block_size)` quantizes and dequantizes x along its last
dim with `ActFormat(kind, block_size)` (numerics.fake_quant, bit-identical to formats.act).
It exports to ONNX as one node `qpasses.QuantizeActivation(kind=..., block_size=...)`, which the
lowering rules either fuse into a quantized matmul or expand into standard ops.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

from qpasses.formats.spec import ActFormat

DOMAIN = "qpasses"
DOMAIN_VERSION = 1
QUANT_ACT = "QuantizeActivation"


@torch.library.custom_op("qpasses::quant_act", mutates_args=())
def quant_act(x: torch.Tensor, kind: str, block_size: int) -> torch.Tensor:
    from qpasses.numerics.fake_quant import fake_quant_activation

    return fake_quant_activation(x, ActFormat(kind, block_size))


@quant_act.register_fake
def _quant_act_fake(x, kind, block_size):
    return torch.empty_like(x)


def _register_schema() -> None:
    if onnx.defs.has(QUANT_ACT, DOMAIN):
        return
    onnx.defs.register_schema(
        OpSchema(
            QUANT_ACT, DOMAIN, DOMAIN_VERSION,
            doc="Quantize-dequantize X along its last axis (qpasses activation format).",
            inputs=[OpSchema.FormalParameter("X", "T")],
            outputs=[OpSchema.FormalParameter("Y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32 activations")],
            attributes=[
                OpSchema.Attribute("kind", OpSchema.AttrType.STRING, "int8, int4 or mxfp4"),
                OpSchema.Attribute("block_size", OpSchema.AttrType.INT, "elements per scale; 0 = per token"),
            ],
        )
    )


_register_schema()
_opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _translate_quant_act(x: onnxscript.FLOAT, kind: str, block_size: int) -> onnxscript.FLOAT:
    return _opset.QuantizeActivation(x, kind=kind, block_size=block_size)


TRANSLATIONS = {torch.ops.qpasses.quant_act.default: _translate_quant_act}
