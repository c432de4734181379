"""fold_norms: a norm scale γ whose product feeds only linears is folded into their weights.

Identity relied on: (x ⊙ γ) Wᵀ = x (W diag γ)ᵀ. Afterwards γ = 1, so the norm is plain RMS
normalization, which commutes with any orthogonal rotation (the rotate_* passes need that).
No mean-centering: for RMSNorm models it does not preserve the function. Found by pattern: a
multiply by a 1-D parameter read only by linears (through casts and token slices). Stage: fx.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qpasses.errors import PreconditionError
from qpasses.ir.fx_edit import parameter_of
from qpasses.ir.fx_flow import linear_readers
from qpasses.passes.base import Pass

MUL = torch.ops.aten.mul.Tensor


@dataclass(frozen=True)
class Settings:
    pass


def norm_scales(graph) -> dict[str, list]:
    """γ parameter name -> the sites reading x ⊙ γ, over every program."""
    by_node = graph.sites_by_node()
    found: dict[str, list] = {}
    for ep in graph.programs.programs().values():
        for node in ep.graph.find_nodes(op="call_function", target=MUL):
            gammas = [a for a in node.args if parameter_of(ep, a) and ep.state_dict[parameter_of(ep, a)].dim() == 1]
            users = linear_readers(node)
            if len(gammas) == 1 and users:
                sites = found.setdefault(graph.programs.fqn(parameter_of(ep, gammas[0])), [])
                sites += [by_node[u] for u in users if by_node[u] not in sites]
    return found


class FoldNorms(Pass):
    name = "fold_norms"
    stages = ("fx",)
    Settings = Settings

    def run(self, graph, ctx):
        tied = graph.programs.tied_names()
        folded = 0
        for gamma_name, sites in norm_scales(graph).items():
            gamma = graph.programs.parameter(gamma_name).detach().double().numpy()
            if (gamma == 1).all():
                continue
            for site in sites:
                if site.weight_name in tied:
                    raise PreconditionError(f"{site.name} shares its weight with an embedding table; run "
                                            f"untie_embeddings before fold_norms")
                site.set_weight((site.weight().astype(np.float64) * gamma).astype(np.float32))
            graph.set_parameter(gamma_name, np.ones_like(gamma, dtype=np.float32))
            folded += 1
        return {"fold.norm_scale": folded}
