"""ONNX rewrite rules (onnxscript rewriter: pattern / check / rewrite), usable on any ONNX model.

    import onnx_ir as ir
    from onnxscript.rewriter import RewriteRuleSet
    from qpasses.formats import WeightFormat
    from qpasses.rules import matmulnbits_rules

    model = ir.load("model.onnx")
    RewriteRuleSet(matmulnbits_rules(fmt=WeightFormat("int4", 32))).apply_to_model(model)

Without a `plan` each linear rule quantizes its constant weight itself (round to nearest); with
the plan written by qpasses' stage A it packs exactly those codes. Every rewritten node carries its
rule name in the node metadata (`pkg.onnxscript.rewriter.rule_name`).
"""

from qpasses.rules.expand_quant_act import expand_rules
from qpasses.rules.lower_gather import gather_rules
from qpasses.rules.lower_int import matmulnbits_rules, qdq_rules
from qpasses.rules.lower_mxfp4_std import mxfp4_std_rules
from qpasses.rules.lower_runtime import runtime_rules

__all__ = ["expand_rules", "gather_rules", "matmulnbits_rules", "mxfp4_std_rules", "qdq_rules", "runtime_rules"]
