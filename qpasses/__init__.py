"""qpasses: a declarative graph-rewriting compiler for 4-bit LLM deployment as plain ONNX files."""

__version__ = "0.1.0"
