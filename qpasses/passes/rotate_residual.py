"""rotate_residual: one rotation R1 of the residual stream, folded into every weight around it.

Identities relied on (docs/methods.md#residual-rotation, checked op by op in ir.fx_flow): the embedding
table E ← E R1 and every linear writing into the stream W ← R1ᵀ W put the stream in the rotated
basis; RMS norms with γ = 1 commute with R1; every linear reading the stream W ← W R1 undoes
it: (x R1)(W R1)ᵀ = x Wᵀ. Needs fold_norms (and untie_embeddings for a tied lm_head) first.
Nothing is added to the graph. Stage: fx.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from qpasses.errors import PreconditionError
from qpasses.ir.fx_flow import residual_stream
from qpasses.ir.sites import select
from qpasses.passes.base import Pass
from qpasses.passes.rotation_choice import (
    GATE_ROWS,
    GATE_TOKENS,
    Settings,
    choose,
    sample_rows,
)


class RotateResidual(Pass):
    name = "rotate_residual"
    stages = ("fx",)
    changes_activations = True
    Settings = Settings

    def run(self, graph, ctx):
        by_node = graph.sites_by_node()
        roles: dict[str, str] = {}  # weight name -> "in" (W ← W R) or "out" (W ← Rᵀ W)
        sites, width = {}, None
        for ep in graph.programs.programs().values():
            stream = residual_stream(ep)
            width = stream.width
            for table in stream.tables:
                roles[graph.programs.fqn(table)] = "in"  # E ← E R: the table is written like a reader
            for role, nodes in (("in", stream.readers), ("out", stream.writers)):
                for node in nodes:
                    site = by_node[node]
                    if roles.setdefault(site.weight_name, role) != role:
                        raise PreconditionError(f"{site.name} both reads and writes the residual stream")
                    sites[site.weight_name] = site
        rot, info = choose(self.settings, width, *self._statistics(graph, ctx, sites, roles))
        counts: Counter[str] = Counter()
        for name, role in roles.items():
            site = sites.get(name)
            if site is None:  # an embedding table: E ← E R
                graph.set_parameter(name, rot.fold_into_inputs(graph.programs.parameter(name).detach().float().numpy()))
                counts["rotate.residual.table"] += 1
                continue
            if role == "out" and site.bias() is not None:
                raise PreconditionError(f"{site.name} writes the residual stream with a bias; not supported yet")
            fold = rot.fold_into_inputs if role == "in" else rot.fold_into_outputs
            site.set_weight(fold(site.weight()))
            counts[f"rotate.residual.{'reader' if role == 'in' else 'writer'}"] += 1
        ctx.notes.rotations["residual"] = info
        return dict(counts)

    def _statistics(self, graph, ctx, sites, roles):
        if not self.settings.needs_stats:
            return ()
        readers = [s for n, s in sites.items() if roles[n] == "in"]
        first_per_input = {}
        for site in select(readers, ctx.ignore):
            first_per_input.setdefault(site.uses[0][1].args[0], site)
        stats = ctx.calibration.stats(graph, list(first_per_input.values()), self.settings.stats_spec())
        gram = sum(s.block_gram.numpy() for s in stats.values()) / len(stats)
        tokens = np.concatenate([s.tokens.numpy() for s in stats.values()])
        tokens = sample_rows(tokens, GATE_TOKENS, self.settings.seed)
        w = np.concatenate([s.weight() for s in select(readers, ctx.ignore)])
        return gram, tokens, sample_rows(w, GATE_ROWS, self.settings.seed)
