"""Evaluation: `perplexity` (the protocol and the torch / onnxruntime logits functions),
`session` (onnxruntime sessions with controlled graph optimizations) and `measure` (what a
compile run measures)."""
