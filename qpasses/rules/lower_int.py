"""Lower INT4/INT8 linears to what stock onnxruntime runs.

matmulnbits: x · Wᵀ == com.microsoft.MatMulNBits(x, pack(codes), s, zp), since W = s · (code − zp)
             per block; with a QuantizeActivation(int8, block 32) in front, accuracy_level 4 does that
             same activation quantization inside the kernel, so the pair fuses.
qdq:         x · Wᵀ == MatMul(x, DequantizeLinear(codesᵀ, sᵀ, zpᵀ; axis 0, block_size)): the blocked
             DequantizeLinear of opset 21 rebuilds Wᵀ exactly.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult

from qpasses.domain import MS_DOMAIN
from qpasses.formats import pack_matmulnbits
from qpasses.rules.base import LinearRule, fail, init, variants


class ToMatMulNBits(LinearRule):
    rule_name = "matmulnbits.int"
    kinds = ("int4", "int8")
    fuses_act = True

    def check_lowering(self, w, q, xq):
        block = q.codes.shape[2]
        if block < 16 or block & (block - 1):
            return fail(f"{w.name}: block of {block} is not a power of two >= 16 as MatMulNBits needs; "
                        "use target qdq", w)
        if self.act and self.act_format(xq) != ("int8", 32):
            return fail(f"{w.name}: MatMulNBits quantizes activations only as int8 per 32 (accuracy_level 4), "
                        f"not {self.act_format(xq)}", xq)
        return MatchResult()

    def lower(self, op, x, w, q, xq):
        n, k = q.shape
        packed = pack_matmulnbits(q)
        inputs = [x, init(op, f"{w.name}.qweight", packed["B"], near=w),
                  init(op, f"{w.name}.qscales", packed["scales"])]
        if packed["zero_points"] is not None:
            inputs.append(init(op, f"{w.name}.qzeros", packed["zero_points"]))
        return op.MatMulNBits(*inputs, _domain=MS_DOMAIN, K=k, N=n, bits=q.fmt.bits, block_size=q.codes.shape[2],
                              accuracy_level=4 if self.act else self.accuracy_level)


class ToDequantizeLinear(LinearRule):
    rule_name = "qdq.int"
    kinds = ("int4", "int8")

    def lower(self, op, x, w, q, xq):
        n, k = q.shape
        nb, block = q.codes.shape[1:]
        signed = q.fmt.symmetric
        codes = q.codes.astype(np.int16) - (q.zero_points[:, :, None] if signed else 0)
        codes_t = np.ascontiguousarray(codes.reshape(n, nb * block)[:, :k].T)  # [K, N]
        dtype = {(4, True): ir.DataType.INT4, (4, False): ir.DataType.UINT4,
                 (8, True): ir.DataType.INT8, (8, False): ir.DataType.UINT8}[(q.fmt.bits, signed)]
        np_dtype = {ir.DataType.INT4: ml_dtypes.int4, ir.DataType.UINT4: ml_dtypes.uint4,
                    ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8}[dtype]
        per_channel = q.fmt.block_size == 0
        scales = q.scales[:, 0] if per_channel else np.ascontiguousarray(q.scales.T)
        # K-major codes: not the MatMulNBits layout a tied table's gather shares as `.qweight`
        inputs = [init(op, f"{w.name}.dq_codes", codes_t.astype(np_dtype), dtype),
                  init(op, f"{w.name}.dq_scales", scales.astype(np.float32))]
        if not signed:
            zp = q.zero_points[:, 0] if per_channel else np.ascontiguousarray(q.zero_points.T)
            inputs.append(init(op, f"{w.name}.dq_zeros", zp.astype(np_dtype), dtype))
        attrs = {"axis": 1} if per_channel else {"axis": 0, "block_size": block}
        return op.MatMul(x, op.DequantizeLinear(*inputs, **attrs))


def matmulnbits_rules(plan=None, fmt=None, accuracy_level: int = 0) -> list:
    return variants(ToMatMulNBits, plan=plan, fmt=fmt, accuracy_level=accuracy_level)


def qdq_rules(plan=None, fmt=None) -> list:
    return variants(ToDequantizeLinear, plan=plan, fmt=fmt)
