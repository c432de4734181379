"""rotate_heads: a per-head rotation R2 folded into each value projection and output projection.

Identity relied on (docs/methods.md#head-rotation, checked op by op in ir.fx_flow): attention mixes
tokens, never channels within a head, so v_proj writing with W_v ← (I ⊗ R2)ᵀ W_v and o_proj
reading with W_o ← W_o (I ⊗ R2) preserve the function for any orthogonal R2 of the head size;
grouped-query heads need nothing special, since every head gets the same R2. The KV cache then
holds V in the rotated basis (the same graph reads it back). Nothing is added to the graph.
Stage: fx.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from qpasses.errors import PreconditionError
from qpasses.ir.fx_flow import head_paths
from qpasses.numerics.rotation import Rotation
from qpasses.passes.base import Pass
from qpasses.passes.rotation_choice import (
    GATE_ROWS,
    GATE_TOKENS,
    Settings,
    choose,
    sample_rows,
)


class RotateHeads(Pass):
    name = "rotate_heads"
    stages = ("fx",)
    changes_activations = True
    Settings = Settings

    def run(self, graph, ctx):
        by_node = graph.sites_by_node()
        pairs = {}  # v_proj site name -> (v site, o sites, head_dim)
        for ep in graph.programs.programs().values():
            for path in head_paths(ep):
                v = by_node[path.writer]
                pairs.setdefault(v.name, (v, [by_node[r] for r in path.readers], path.head_dim))
        stats = self._statistics(graph, ctx, pairs)
        counts: Counter[str] = Counter()
        notes = ctx.notes.rotations
        for v, outs, hd in pairs.values():
            if v.bias() is not None:
                raise PreconditionError(f"{v.name} has a bias; per-head rotation of a biased value projection "
                                        f"is not supported yet")
            r2, info = choose(self.settings, hd, *self._per_head(stats, outs, hd))
            dense = r2.matrix()
            v.set_weight(Rotation(size=v.shape[0], right=dense).fold_into_outputs(v.weight()))
            for o in outs:
                o.set_weight(Rotation(size=o.shape[1], right=dense).fold_into_inputs(o.weight()))
            notes[f"heads.{v.name}"] = info
            counts["rotate.heads.v"] += 1
            counts["rotate.heads.o"] += len(outs)
        return dict(counts)

    def _statistics(self, graph, ctx, pairs):
        if not self.settings.needs_stats:
            return {}
        outs = list({o.name: o for _, os, _ in pairs.values() for o in os}.values())
        return ctx.calibration.stats(graph, outs, self.settings.stats_spec())

    def _per_head(self, stats, outs, hd):
        """Block Gram, tokens and weight columns of every head of these output projections, pooled:
        a head's block Gram is its diagonal block of the input's (blocks never straddle heads)."""
        if not stats:
            return ()
        nb = hd // 32
        grams, tokens, weights = [], [], []
        for o in outs:
            s, k = stats[o.name], o.shape[1]
            c = s.block_gram.numpy()
            grams += [c[h:h + nb, h:h + nb] for h in range(0, len(c), nb)]
            tokens.append(s.tokens.numpy().reshape(-1, hd))
            weights.append(o.weight().reshape(o.shape[0], k // hd, hd).transpose(1, 0, 2).reshape(-1, hd))
        seed = self.settings.seed
        return (sum(grams) / len(grams), sample_rows(np.concatenate(tokens), GATE_TOKENS, seed),
                sample_rows(np.concatenate(weights), GATE_ROWS, seed))
