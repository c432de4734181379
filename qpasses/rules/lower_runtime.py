"""Lower INT4 and MXFP4 linears to the ops of our runtime library (qpasses.runtime).

mxfp4: x · Wᵀ == qpasses.MatMulMXFP4(x, B, E), since W[n, k] = E2M1(code) · 2^(E − 127) per block of 32;
int4:  x · Wᵀ == qpasses.MatMulInt4(x, B, s, zp), since W = s · (code − zp) per block (the bytes of
       MatMulNBits, any block of 16..128 or per channel).
A QuantizeActivation(kind, block) in front fuses into the op (act_bits / act_format / act_block),
because the op quantizes its input with the same rule, bit for bit (tests/runtime).
A low-rank branch on the float input fuses into the op's L, R inputs:
       op(Q_a(x)) + (x L) R == op(x; L, R), the op adds (x L) R of its unquantized input A.
"""

from __future__ import annotations

from onnxscript.rewriter import MatchResult

from qpasses.domain import DOMAIN
from qpasses.formats import pack_mxfp4
from qpasses.formats.packing import pack_int_blocked
from qpasses.rules.base import LinearRule, fail, init, lowrank_inputs, variants
from qpasses.runtime.ops import INPUTS, OpConfig

# QuantizeActivation (kind, block) -> the op's activation attributes.
ACTS = {("int8", 32): (8, "int", 32), ("int8", 0): (8, "int", 0), ("int4", 32): (4, "int", 32),
        ("int4", 0): (4, "int", 0), ("mxfp4", 32): (4, "mxfp", 32)}


class ToRuntimeMatMul(LinearRule):
    rule_name = "qpasses.matmul"
    kinds = ("int4", "mxfp4")
    fuses_act = True
    fuses_lowrank = True

    def check_lowering(self, w, q, xq):
        block = q.codes.shape[2]
        if q.fmt.kind == "int4" and block not in (16, 32, 64, 128) and q.fmt.block_size != 0:
            return fail(f"{w.name}: MatMulInt4 takes blocks of 16, 32, 64, 128 or per channel, not {block}", w)
        if self.act and self.act_format(xq) not in ACTS:
            return fail(f"{w.name}: the runtime quantizes activations as int8/int4 per 32 or per token, or mxfp4 "
                        f"per 32, not {self.act_format(xq)}", xq)
        return MatchResult()

    def config(self, q, xq) -> OpConfig:
        n, k = q.shape
        bits, fmt, block = ACTS[self.act_format(xq)] if self.act else (0, "int", 32)
        op = "MatMulMXFP4" if q.fmt.kind == "mxfp4" else "MatMulInt4"
        return OpConfig(op, K=k, N=n, act_bits=bits, act_format=fmt, act_block=block,
                        block_size=q.codes.shape[2] if q.fmt.block_size else k)

    def lower(self, op, x, w, q, xq, lowrank=None):
        cfg = self.config(q, xq)
        if cfg.mxfp4:
            b, e = pack_mxfp4(q)
            inputs = [x, init(op, f"{w.name}.qweight", b, near=w), init(op, f"{w.name}.qscales", e)]
        else:
            packed = pack_int_blocked(q)
            inputs = [x, init(op, f"{w.name}.qweight", packed["B"], near=w),
                      init(op, f"{w.name}.qscales", packed["scales"])]
            if packed["zero_points"] is not None:
                inputs.append(init(op, f"{w.name}.qzeros", packed["zero_points"]))
        if lowrank is not None:
            slot = INPUTS[cfg.op].index("L")
            inputs += [None] * (slot - len(inputs)) + lowrank_inputs(op, w, lowrank)
        return getattr(op, cfg.op)(*inputs, _domain=DOMAIN, **cfg.attributes(lowrank=lowrank is not None))


def runtime_rules(plan=None, fmt=None) -> list:
    return variants(ToRuntimeMatMul, plan=plan, fmt=fmt)
