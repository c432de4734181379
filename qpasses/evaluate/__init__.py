"""Evaluation: `perplexity` (the protocol and the torch / onnxruntime logits functions),
`measure` (what a compile run measures), `generate` and `layer_error`. The onnxruntime sessions
they run are `qpasses.runtime.ort`'s."""
