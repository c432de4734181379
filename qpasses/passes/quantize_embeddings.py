"""quantize_embeddings: round-to-nearest quantization of embedding tables, snapped onto the grid.

Identity relied on: as for quantize_weights, Ŵ = dequant(quant(W)) is on the grid, so the
lowering (GatherBlockQuantized, or the MXFP4 row decode) reproduces the snapped table exactly. A table tied to the
lm_head is one tensor: if the lm_head was already quantized, its codes are kept (not
re-quantized) and the lowering shares their bytes between the gather and the matmul.
Stages: fx and onnx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from qpasses.errors import RecipeError
from qpasses.ir.sites import select
from qpasses.passes.base import Pass
from qpasses.passes.quantize_weights import snap
from qpasses.passes.weight_format import WeightFormatSettings


@dataclass(frozen=True)
class Settings(WeightFormatSettings):
    """format (int4 | int8: GatherBlockQuantized reads them; mxfp4: a decode of the gathered rows),
    block_size, symmetric, scale_rule: weight_format.py."""

    def __post_init__(self):
        super().__post_init__()
        if not self.weight_format().block_size or not self.symmetric:
            raise ValueError("embeddings take symmetric int4 or int8 with a block size of 16, 32, 64, 128 or 256, "
                             "or mxfp4")


class QuantizeEmbeddings(Pass):
    name = "quantize_embeddings"
    stages = ("fx", "onnx")
    Settings = Settings

    def run(self, graph, ctx):
        counts: Counter[str] = Counter()
        for table in select(graph.embedding_sites(), ctx.ignore):
            fmt = self.settings_for(table, ctx).weight_format()
            planned = ctx.quantized.get(table.weight_name)
            if planned is not None:
                if planned.fmt != fmt:
                    raise RecipeError(f"{table.name} is tied to a linear already quantized as {planned.fmt}; "
                                      f"quantize_embeddings asks for {fmt}: make them agree")
                counts["embedding.tied"] += 1
                continue
            snap(table, fmt, ctx)
            counts[f"embedding.{fmt.kind}_g{fmt.block_size}"] += 1
        return dict(counts)
