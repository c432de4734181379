"""The ONNX schema of `qpasses.QuantizeActivation` (stage A exports it, ir.fx_ops; the rules lower
it), registered with onnx when this module is imported, so that the checker and shape inference
know the op. Torch-free: stage B and the rules import it without stage A."""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from qpasses.domain import DOMAIN, DOMAIN_VERSION, QUANT_ACT


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
