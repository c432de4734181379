"""rotate_inputs: online rotations x ↦ x R in front of linears, R folded into their weights.

Identity relied on: (x R)(W R)ᵀ = x Wᵀ for orthogonal R, whatever produced x, so this works
where nothing can absorb the rotation offline: down_proj's input silu(gate) ⊙ up, or an o_proj
rotation that mixes heads (docs/methods.md#online-rotations). Each distinct input gets one node,
`torch.ops.qpasses.rotate` (two small MatMuls for a Kronecker-factored R, one for a block
rotation), shared by the linears that read it; it survives ONNX export as standard ops.
Which inputs, found by pattern (ir.fx_flow), never by module name:
    norm       the output of an RMS norm or a LayerNorm (q/k/v, gate/up, lm_head)
    attention  the attention output, head-blocked (o_proj)
    other      anything else (down_proj)
Stage: fx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from qpasses.errors import PreconditionError, RecipeError
from qpasses.ir.fx_flow import head_paths, norm_output
from qpasses.ir.sites import select
from qpasses.passes import rotation_choice
from qpasses.passes.base import Pass
from qpasses.passes.rotation_choice import GATE_ROWS, choose, sample_rows

CLASSES = ("norm", "attention", "other")


@dataclass(frozen=True)
class Settings(rotation_choice.Settings):
    inputs: tuple[str, ...] = ("attention", "other")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "inputs", tuple(self.inputs))
        bad = set(self.inputs) - set(CLASSES)
        if bad or not self.inputs:
            raise ValueError(f"inputs must name some of {', '.join(CLASSES)}; got {list(self.inputs)}")


def input_class(node, attention_readers) -> str:
    if node in attention_readers:
        return "attention"
    return "norm" if norm_output(node.args[0]) else "other"


class RotateInputs(Pass):
    name = "rotate_inputs"
    stages = ("fx",)
    changes_activations = True
    Settings = Settings

    def run(self, graph, ctx):
        ep = graph.programs.logits
        readers = {r for path in head_paths(ep) for r in path.readers}
        groups: dict = {}  # input node (logits program) -> sites reading it
        classes = {}
        tied = graph.programs.tied_names()
        for site in select(graph.sites(), ctx.ignore):
            node = next(n for p, n in site.uses if p == "logits")
            cls = input_class(node, readers)
            if cls not in self.settings.inputs:
                continue
            if site.weight_name in tied:
                raise PreconditionError(f"{site.name} shares its weight with an embedding table; run "
                                        f"untie_embeddings first or ignore it")
            groups.setdefault(node.args[0], []).append(site)
            classes[node.args[0]] = cls
        if not groups:
            raise RecipeError(f"rotate_inputs found no linear reading {' or '.join(self.settings.inputs)} inputs")
        stats = self._statistics(graph, ctx, groups)
        counts: Counter[str] = Counter()
        notes = ctx.notes.rotations
        for x, sites in groups.items():
            k = sites[0].shape[1]
            w = sample_rows(np.concatenate([s.weight() for s in sites]), GATE_ROWS, self.settings.seed)
            extra = (stats[sites[0].name].block_gram.numpy(), stats[sites[0].name].tokens.numpy(), w) if stats else ()
            rot, info = choose(self.settings, k, *extra)
            graph.rotate_input(sites, rot, key=sites[0].name)
            for site in sites:
                site.set_weight(rot.fold_into_inputs(site.weight()))
            notes[f"online.{sites[0].name}"] = info
            counts[f"rotate.online.{classes[x]}"] += 1
        return dict(counts)

    def _statistics(self, graph, ctx, groups):
        if not self.settings.needs_stats:
            return {}
        return ctx.calibration.stats(graph, [sites[0] for sites in groups.values()], self.settings.stats_spec())
