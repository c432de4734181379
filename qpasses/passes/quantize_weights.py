"""quantize_weights: round-to-nearest weight quantization, snapped onto the format grid.

Identity relied on: W ← dequant(quant(W)) keeps the graph runnable in float, and
dequant(quant(Ŵ)) == Ŵ for Ŵ on the grid, so lowering can pack Ŵ losslessly.
The exact codes go into `ctx.quantized[weight_name]`; stage B packs them.
Stages: fx and onnx (works on an ONNX input too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from qpasses.errors import PostconditionError
from qpasses.formats import QuantizedWeight, dequantize_weight, quantize_weight
from qpasses.formats.spec import WeightFormat
from qpasses.ir.sites import check_finite, select
from qpasses.passes.base import Pass
from qpasses.passes.weight_format import WeightFormatSettings


@dataclass(frozen=True)
class Settings(WeightFormatSettings):
    """format, block_size, symmetric, scale_rule: weight_format.py."""


def rule_name(fmt: WeightFormat) -> str:
    if fmt.kind == "mxfp4":
        return f"rtn.mxfp4_{fmt.scale_rule}"
    group = f"g{fmt.block_size}" if fmt.block_size else "per_channel"
    return f"rtn.{fmt.kind}_{'sym' if fmt.symmetric else 'asym'}_{group}"


def snap(site, fmt: WeightFormat, ctx) -> QuantizedWeight:
    """Quantize a site's weight, put the dequantized (on-grid) tensor back, record the codes."""
    w = site.weight()
    check_finite(site.weight_name, w)
    q = quantize_weight(w, fmt)
    site.set_weight(dequantize_weight(q))
    ctx.quantized[site.weight_name] = q
    return q


class QuantizeWeights(Pass):
    name = "quantize_weights"
    stages = ("fx", "onnx")
    plans_linears = True
    Settings = Settings

    def run(self, graph, ctx):
        counts: Counter[str] = Counter()
        for site in select(graph.sites(), ctx.ignore):
            if site.weight_name in ctx.quantized:  # a weight shared by two sites (tied) is snapped once
                continue
            fmt = self.settings_for(site, ctx).weight_format()
            snap(site, fmt, ctx)
            counts[rule_name(fmt)] += 1
        return dict(counts)

    def ensures(self, graph, ctx):
        on_grid(graph, ctx)


def on_grid(graph, ctx) -> None:
    """Every quantized site's weight is exactly the dequantization of its recorded codes."""
    for site in graph.sites():
        q = ctx.quantized.get(site.weight_name)
        if q is not None and not np.array_equal(site.weight(), dequantize_weight(q)):
            raise PostconditionError(f"{site.name}: weight is not on the grid of its recorded codes")
