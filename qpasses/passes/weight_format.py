"""The weight-format settings of every pass that quantizes weights, with one set of defaults.

quantize_weights, optimize_weights and quantize_embeddings inherit these fields, so
`--set quantize_weights.block_size=32`, `--set optimize_weights.format=mxfp4` and an
`[[override]] ... block_size = 64` mean the same in each. A pass narrows what it accepts in its
own __post_init__ (optimize_weights: symmetric INT4 or MXFP4; quantize_embeddings: blocked).
"""

from __future__ import annotations

from dataclasses import dataclass

from qpasses.formats.spec import WeightFormat


@dataclass(frozen=True)
class WeightFormatSettings:
    format: str = "int4"  # int4 | int8 | mxfp4
    block_size: int = 128  # elements per scale along K; 0 = per output channel; mxfp4 always uses 32
    symmetric: bool = True  # int4 / int8 only (asymmetric: an integer zero point per block)
    scale_rule: str = "floor"  # mxfp4 only: floor (OCP) | even

    def __post_init__(self):
        self.weight_format()  # validates

    def weight_format(self) -> WeightFormat:
        block = 32 if self.format == "mxfp4" else self.block_size
        return WeightFormat(self.format, block, self.symmetric, self.scale_rule)
