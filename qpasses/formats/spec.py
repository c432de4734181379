"""Format specifications: what a quantized tensor looks like, as frozen data.

Granularity is one knob, `block_size` along the reduction (input) dimension K:
0 means one block per row (per output channel for weights, per token for activations).
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_KINDS = ("int4", "int8", "mxfp4")
ACT_KINDS = ("int8", "int4", "mxfp4")
MXFP4_SCALE_RULES = ("floor", "even")


@dataclass(frozen=True)
class WeightFormat:
    """How a weight matrix W[N, K] is stored.

    kind: "int4" (symmetric: s = amax/7, codes clamp [-8, 7]; asymmetric: GPTQ-style integer
          zero point), "int8" (symmetric, s = amax/127) or "mxfp4" (OCP MX v1.0).
    block_size: elements per scale along K; 0 = per output channel. MXFP4 is always 32.
    symmetric: INT only; MXFP4 is symmetric by construction.
    scale_rule: MXFP4 only, "floor" (OCP default) or "even".
    """

    kind: str = "int4"
    block_size: int = 128
    symmetric: bool = True
    scale_rule: str = "floor"

    def __post_init__(self):
        if self.kind not in WEIGHT_KINDS:
            raise ValueError(f"weight format kind {self.kind!r} is not one of {WEIGHT_KINDS}")
        if self.kind == "mxfp4":
            if self.block_size != 32:
                raise ValueError(f"mxfp4 uses blocks of 32, not {self.block_size}")
            if not self.symmetric:
                raise ValueError("mxfp4 has no asymmetric variant")
            if self.scale_rule not in MXFP4_SCALE_RULES:
                raise ValueError(f"mxfp4 scale_rule {self.scale_rule!r} is not one of {MXFP4_SCALE_RULES}")
        elif self.block_size not in (0, 16, 32, 64, 128, 256):
            raise ValueError(f"block_size {self.block_size} must be 0 (per channel) or one of 16, 32, 64, 128, 256")

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4


@dataclass(frozen=True)
class ActFormat:
    """How an activation (a linear's input) is quantized on the fly, per token.

    kind: "int8" (s = amax/127), "int4" (s = amax/7, clamp [-8, 7]) or "mxfp4".
    block_size: elements per scale along the feature dim; 0 = the whole row (per token).
    MXFP4 always uses 32. Codes are rint(a * (qmax / amax)) in float32, ties to even.
    """

    kind: str = "int8"
    block_size: int = 32

    def __post_init__(self):
        if self.kind not in ACT_KINDS:
            raise ValueError(f"activation format kind {self.kind!r} is not one of {ACT_KINDS}")
        if self.kind == "mxfp4" and self.block_size != 32:
            raise ValueError(f"mxfp4 activations use blocks of 32, not {self.block_size}")
        if self.block_size < 0:
            raise ValueError("block_size must be >= 0")

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4
