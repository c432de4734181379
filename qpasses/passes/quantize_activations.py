"""quantize_activations: simulated dynamic quantization of every selected linear's input.

Inserts x ← Q_a(x) (quantize-dequantize per token and block, `ActFormat`) in front of each site,
recorded in `ctx.act_formats[weight_name]` so lowering can fuse it into a quantized matmul.
Not function-preserving by design. Stages: fx and onnx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from qpasses.formats.spec import ActFormat
from qpasses.ir.sites import select
from qpasses.passes.base import Pass


@dataclass(frozen=True)
class Settings:
    format: str = "int8"  # int8 | int4 | mxfp4
    block_size: int = 32  # 0 = per token

    def __post_init__(self):
        self.act_format()

    def act_format(self) -> ActFormat:
        return ActFormat(self.format, self.block_size)


class QuantizeActivations(Pass):
    name = "quantize_activations"
    stages = ("fx", "onnx")
    changes_activations = True
    Settings = Settings

    def run(self, graph, ctx):
        counts: Counter[str] = Counter()
        for site in select(graph.sites(), ctx.ignore):
            fmt = self.settings_for(site, ctx).act_format()
            site.quantize_input(fmt)
            ctx.act_formats[site.weight_name] = fmt
            counts[f"act.{fmt.kind}_{'tok' if fmt.block_size == 0 else f'b{fmt.block_size}'}"] += 1
        return dict(counts)
