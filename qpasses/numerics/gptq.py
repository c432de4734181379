"""GPTQ: column-by-column quantization of W[N, K] with the rounding error of each column spread
over the columns not yet quantized, through the inverse Hessian H = XᵀX (docs/methods.md#gptq).

Identity relied on: for a column j quantized to ŵ_j, the update W[:, j+1:] -= e_j ⊗ U[j, j+1:] / U[j, j]
(U the upper Cholesky factor of H⁻¹) minimizes ‖X(W − Ŵ)ᵀ‖² over the remaining columns, so the
layer error falls below round-to-nearest's for the same scales.

Scales are chosen group by group on the already error-corrected weights (group-interleaved, the
PiSO + GPTQ of docs/methods.md#gptq): columns are ordered group by group (act-order: groups by their
summed diag(H), columns inside a group by diag(H), both descending), and when GPTQ reaches the first
column of a group, `scales_for(w_group [N, g], h_group [g, g])` returns that group's scale per row.
Per-channel (one group) is the layer-interleaved mode: scales once, from the whole row.
Torch float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qpasses.numerics import native
from qpasses.numerics.piso import nearest

F64 = torch.float64
ScalesFor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (w [N, g], h [g, g]) -> s [N]


def group_order(diag: torch.Tensor, group: int, act_order: bool) -> list[torch.Tensor]:
    """Original column indices of each group, in processing order (act-order or natural)."""
    k = diag.shape[0]
    groups = [torch.arange(a, min(a + group, k)) for a in range(0, k, group)]
    if not act_order:
        return groups
    groups = [g[diag[g].argsort(descending=True, stable=True)] for g in groups]
    weight = torch.stack([diag[g].sum() for g in groups])
    return [groups[i] for i in weight.argsort(descending=True, stable=True)]


def gptq(w: torch.Tensor, h: torch.Tensor, group: int, scales_for: ScalesFor, grid: torch.Tensor,
         damp: float = 0.01, act_order: bool = True, lazy: int = 128,
         compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K], H [K, K] -> (Ŵ [N, K] dequantized, scales [N, ceil(K / group)] per original group).

    group: columns per scale (K or more: one scale per row). grid: the unscaled grid; a column w
    rounds to nearest(w / s)·s. damp: λ = damp · mean(diag H) added to the diagonal. Columns whose
    input is always zero (H_jj = 0) are zeroed. Errors are propagated lazily in blocks: a group, or
    `lazy` columns when the whole row is one group. The column loop inside a block runs compiled
    (numerics.native, the same bits) when built and `compiled`; this torch loop is its reference.
    """
    w, h = w.to(F64), h.to(F64)
    n, k = w.shape
    group = min(group, k)
    dead = h.diagonal() == 0
    diag = torch.where(dead, 1.0, h.diagonal())
    groups = group_order(diag, group, act_order)
    perm = torch.cat(groups)
    # Memory: with K = 8192 one [K, K] float64 matrix is 512 MiB, so H is permuted in one gather
    # and factored in that buffer: LAPACK works in place on a column-major matrix, which hp.T is
    # (H is symmetric), so the chain below allocates no second [K, K] matrix.
    hp = h[perm[:, None], perm[None, :]]
    hp[dead[perm], dead[perm]] = 1.0
    raw, start = [], 0  # the undamped diagonal blocks, for scales_for (groups are contiguous in perm)
    for g in groups:
        raw.append(hp[start:start + len(g), start:start + len(g)].clone())
        start += len(g)
    hp.diagonal().add_(damp * diag.mean())
    u = hp.T
    try:
        torch.linalg.cholesky(u, out=u)  # L, H = L Lᵀ
        torch.cholesky_inverse(u, out=u)  # H⁻¹
        torch.linalg.cholesky(u, upper=True, out=u)  # U, H⁻¹ = Uᵀ U
    except torch.linalg.LinAlgError:
        raise ValueError(f"H + {damp} · mean(diag H) is not positive definite; raise damp") from None
    wp = w[:, perm]  # a copy: the caller's W is not written
    wp[:, dead[perm]] = 0.0
    del w, hp
    out = torch.zeros_like(wp)
    scales = torch.ones(n, len(groups), dtype=F64)
    blocks, start = [], 0
    for gi, g in enumerate(groups):
        step = lazy if len(groups) == 1 else len(g)
        blocks += [(gi, a, min(a + step, start + len(g)), a == start) for a in range(start, start + len(g), step)]
        start += len(g)
    for gi, a, b, first in blocks:
        if first:  # the group's columns are error-corrected up to here: choose its scales
            scales[:, gi] = scales_for(wp[:, a:a + len(groups[gi])], raw[gi])
        s = scales[:, gi]
        if compiled and native.library() is not None:
            wp[:, a:b], out[:, a:b], err = native.gptq_block(wp[:, a:b], u[a:b, a:b], s, grid)
        else:
            err = torch.zeros(n, b - a, dtype=F64)
            for j in range(a, b):
                col = wp[:, j]
                out[:, j] = nearest(col / s, grid) * s
                e = (col - out[:, j]) / u[j, j]
                wp[:, j:b] -= e[:, None] * u[j, j:b][None, :]
                err[:, j - a] = e
        wp[:, b:] -= err @ u[a:b, b:]
    result = wp  # its values are spent: the buffer takes Ŵ in the original column order
    result[:, perm] = out
    order = torch.tensor([int(g.min()) // group for g in groups])
    by_group = torch.empty_like(scales)
    by_group[:, order] = scales
    return result, by_group
