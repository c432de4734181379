"""qpasses: a declarative graph-rewriting compiler for 4-bit LLM deployment as plain ONNX files.

    import qpasses
    report = qpasses.compile("smollm2-135m", "int4-w4a16", "out/int4")   # deploys and measures

The pieces are importable on their own: `qpasses.formats` (bit-exact INT4/MXFP4), `qpasses.rules`
(onnxscript rewrite rules for anybody's ONNX model), `qpasses.passes.registry.PASSES`.
"""

__version__ = "0.1.0"
__all__ = ["compile", "load_recipe"]


def __getattr__(name):  # keep `import qpasses` light: torch and onnx load on first use
    if name == "compile":
        from qpasses.compiler import compile

        return compile
    if name == "load_recipe":
        from qpasses.recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'qpasses' has no attribute {name!r}")
