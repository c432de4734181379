"""The ONNX operator domains the compiler writes, declared once.

`DOMAIN` version `DOMAIN_VERSION` holds our ops: `QuantizeActivation` (inserted by stage A,
lowered away by the rules) and the runtime's MatMulMXFP4 / MatMulInt4 (runtime/src/ops.cc
registers the same name; tests/test_layers.py checks it). `MS_DOMAIN` holds the stock
onnxruntime contrib ops the rules emit (MatMulNBits, GatherBlockQuantized,
SkipSimplifiedLayerNormalization). Imports nothing: every layer may use it.
"""

DOMAIN = "qpasses"
DOMAIN_VERSION = 1
QUANT_ACT = "QuantizeActivation"
MS_DOMAIN = "com.microsoft"
