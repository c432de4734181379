"""The configuration of one qpasses matmul node, as data: its attributes and input names.

One place that knows how a (weight format, activation format, rotation, low rank) choice becomes
the attributes of `qpasses.MatMulMXFP4` / `qpasses.MatMulInt4`; the lowering rules, the numpy
reference and the tests all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpasses.formats.spec import ActFormat

OPS = ("MatMulMXFP4", "MatMulInt4")
# Input lists (trailing optional inputs may be omitted, middle ones given as "").
INPUTS = {
    "MatMulMXFP4": ("A", "B", "E", "bias", "L", "R", "D"),
    "MatMulInt4": ("A", "B", "scales", "zero_points", "bias", "L", "R", "D"),
}


@dataclass(frozen=True)
class OpConfig:
    """op: "MatMulMXFP4" or "MatMulInt4". act_bits: 0 (float), 8 or 4; act_format "int" or "mxfp"
    (4 bits only); act_block 32 or 0 (per token); hadamard_block 0 or a power of two dividing K;
    block_size: MatMulInt4 only (16, 32, 64, 128 or K)."""

    op: str
    K: int
    N: int
    act_bits: int = 0
    act_format: str = "int"
    act_block: int = 32
    hadamard_block: int = 0
    lowrank_input: str = "raw"
    block_size: int = 32

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op {self.op!r} is not one of {OPS}")
        if self.act_bits not in (0, 8, 4):
            raise ValueError(f"act_bits must be 0, 8 or 4, not {self.act_bits}")
        if self.act_format not in ("int", "mxfp") or (self.act_format == "mxfp" and self.act_bits != 4):
            raise ValueError(f"act_format {self.act_format!r} needs act_bits 4 for 'mxfp', else 'int'")

    @property
    def mxfp4(self) -> bool:
        return self.op == "MatMulMXFP4"

    def act(self) -> ActFormat | None:
        """The activation format the op applies (None: float activations)."""
        if self.act_bits == 0:
            return None
        if self.act_format == "mxfp":
            return ActFormat("mxfp4", 32)
        return ActFormat("int8" if self.act_bits == 8 else "int4", self.act_block)

    def attributes(self, lowrank: bool = False, signs: bool = False) -> dict[str, int | str]:
        """The node attributes: the required ones and those that differ from the defaults."""
        attrs: dict[str, int | str] = {"K": self.K, "N": self.N, "act_bits": self.act_bits}
        if not self.mxfp4:
            attrs["block_size"] = self.block_size
        if self.act_bits == 4:
            attrs["act_format"] = self.act_format
        if self.act_bits and self.act_block != 32:
            attrs["act_block"] = self.act_block
        if self.hadamard_block:
            attrs["hadamard_block"] = self.hadamard_block
        if lowrank and (self.hadamard_block or signs):
            attrs["lowrank_input"] = self.lowrank_input
        return attrs
