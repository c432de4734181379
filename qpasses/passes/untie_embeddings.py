"""untie_embeddings: a linear that shares its weight with an embedding table gets its own copy.

Identity relied on: none changes, W_lm = E stays true at the moment of the split; afterwards
the two may be transformed differently (a norm scale folded into the lm_head only,
docs/methods.md#untie-and-fold-norms). The file grows by one table unless a later pass shares it
again. Stage: fx.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpasses.passes.base import Pass


@dataclass(frozen=True)
class Settings:
    pass


class UntieEmbeddings(Pass):
    name = "untie_embeddings"
    stages = ("fx",)
    Settings = Settings

    def run(self, graph, ctx):
        tables = {t.weight_name for t in graph.embedding_sites()}
        untied = 0
        for alias, canonical in list(graph.programs.tied.items()):
            if canonical in tables:
                graph.untie(alias)
                untied += 1
        return {"untie.embedding": untied}
