"""Activation fake-quantization in torch: the twin of qpasses.formats.act, bit for bit.

Same float32 operations in the same order as the numpy oracle. Exportable with torch.export:
no numpy, no data-dependent Python branches, and the MXFP4 exponent is read from the float bits
(a bit view), not from frexp or log2. Divisions by a block quantity are tensor / tensor
(`scalar / tensor` in torch is a reciprocal times the scalar, not a correctly rounded division).
"""

from __future__ import annotations

import torch

from qpasses.formats.spec import ActFormat

QMAX = {"int8": 127.0, "int4": 7.0}


def _int_blocks(xb: torch.Tensor, qmax: float) -> torch.Tensor:
    """float32 [..., nb, B] -> fake-quantized float32, symmetric INT with one scale per block."""
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.full_like(amax, qmax) / amax, 0.0)
    code = torch.clamp(torch.round(xb * inv), -qmax - 1.0, qmax)
    return code * (amax / qmax)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """int32 exponents in [-127, 127] -> float32 2^e built from its bits (2^-127 is subnormal)."""
    return torch.where(e > -127, (e + 127) << 23, 1 << 22).view(torch.float32)


def _mxfp4_blocks(xb: torch.Tensor) -> torch.Tensor:
    """float32 [..., nb, 32] -> MXFP4 fake-quantized float32 (floor scale rule, E2M1 ties to even)."""
    a = xb.abs()
    bits = a.amax(-1, keepdim=True).view(torch.int32)
    scale = _pow2(torch.clamp(((bits >> 23) & 0xFF) - 129, -127, 127))
    a = a / scale
    step = torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0))
    mag = torch.clamp(torch.round(a / step) * step, max=6.0)
    return torch.sign(xb) * mag * scale


def fake_quant_activation(x: torch.Tensor, fmt: ActFormat) -> torch.Tensor:
    """[..., K] -> same shape and dtype, quantized and dequantized along the last dim (in float32)."""
    k = x.shape[-1]
    block = fmt.block_size or k
    nb = -(-k // block)
    xf = x.to(torch.float32)
    if nb * block != k:
        xf = torch.nn.functional.pad(xf, (0, nb * block - k))
    xb = xf.reshape(*x.shape[:-1], nb, block)
    yb = _mxfp4_blocks(xb) if fmt.kind == "mxfp4" else _int_blocks(xb, QMAX[fmt.kind])
    return yb.reshape(*x.shape[:-1], nb * block)[..., :k].to(x.dtype)
