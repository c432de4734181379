"""SRR: a weight as Q + L·R, with a rank budget r split between preserving the top-k subspace of
S·W before quantization and reconstructing the quantization error with the other r − k
(docs/methods.md#srr-and-qer). Torch, float64; no graph library.

Orientation as in the spec: W [K, N] (K = inputs, the transpose of a torch weight), S = (Σ + λI)^½
with Σ the input second moment, so ‖S (W − Ŵ)‖²_F = E‖x (W − Ŵ)‖² (times the token count when Σ
is the gram XᵀX): the layer's output error. For fixed k both low-rank pieces are truncated SVDs
of whitened matrices (Eckart–Young), mapped back with S⁻¹:

    P1 = S⁻¹ SVD_k(S W),   Q = 𝒬(W − P1),   P2 = S⁻¹ SVD_{r−k}(S (W − P1 − Q)),   Ŵ = Q + P1 + P2.

k = 0 is QER (QERA-exact with this S), k = r preserve-only. The probe picks k* in one shot:
k* = argmin_k e(k) · ρ_{r−k}(S E), E uniform noise in [−1, 1] (one draw, fixed seed), ρ_p the
spectral energy left after rank p, e(k) = ρ_k(S W) (the spec's rule) or the quantization error
of W − P1 measured with a cheap quantizer (our default: see `probe`). Each rank-p piece is stored
balanced, L = S⁻¹ U_p Σ_p^½ and R = Σ_p^½ V_pᵀ, so neither factor's range outgrows fp16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

F64 = torch.float64
Quantizer = Callable[[torch.Tensor], torch.Tensor]  # W [K, N] -> Q [K, N], dequantized


def whitening(h: torch.Tensor, damp: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ [K, K] (symmetric PSD) -> (S, S⁻¹) with S = (Σ + λI)^½, λ = damp · mean(diag Σ), by one
    eigendecomposition in float64 (eigenvalues floored at λ against rounding)."""
    h = h.to(F64)
    lam = damp * float(h.diagonal().mean()) or damp
    evals, vecs = torch.linalg.eigh(h + lam * torch.eye(h.shape[0], dtype=F64))
    root = evals.clamp_min(lam).sqrt()
    return (vecs * root) @ vecs.T, (vecs / root) @ vecs.T


def tail_energy(sv: torch.Tensor, upto: int) -> torch.Tensor:
    """ρ_p = Σ_{i>p} σ_i² / Σ_i σ_i² for p = 0..upto -> [upto + 1]."""
    e = sv.to(F64).square()
    total = e.sum().clamp_min(1e-300)
    left = total - torch.cat([torch.zeros(1, dtype=F64), e.cumsum(0)])
    left = torch.cat([left, left[-1:].expand(max(0, upto + 1 - left.numel()))])[: upto + 1]
    return left.clamp_min(0) / total


def noise_tail(s: torch.Tensor, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """ρ_p(S E) for p = 0..rank, E [K, n] uniform in [−1, 1] (one draw, fixed seed): the shape the
    probe assumes the whitened quantization error's spectrum has."""
    noise = torch.rand(s.shape[0], n, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1
    return tail_energy(torch.linalg.svdvals(s @ noise), rank)


def truncate(svd: tuple[torch.Tensor, ...], s_inv: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L [K, p], R [p, N]) with L R = S⁻¹ U_p Σ_p V_pᵀ for the SVD (U, σ, Vᵀ) of a whitened matrix."""
    u, sv, vt = svd
    root = sv[:p].sqrt()
    return s_inv @ (u[:, :p] * root), root[:, None] * vt[:p]


def low_rank(a: torch.Tensor, s_inv: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-p approximation of S⁻¹·a in the whitened norm, for a = S·X [K, N]:
    (L [K, p], R [p, N]) with L R = S⁻¹ SVD_p(a) (Eckart–Young)."""
    if p == 0:
        return a.new_zeros(a.shape[0], 0), a.new_zeros(0, a.shape[1])
    return truncate(torch.linalg.svd(a, full_matrices=False), s_inv, p)


def probe(w: torch.Tensor, s: torch.Tensor, s_inv: torch.Tensor, svd, rank: int, tail: torch.Tensor,
          quantize: Quantizer | None = None) -> int:
    """k* = argmin_k e(k) · ρ_{r−k}(S E_rand) over k = 0..r, svd = the SVD of S W.

    quantize None: the spec's one-shot rule, e(k) = ρ_k(S W), which assumes the quantization error
    falls with the energy left after preserving. Given a (cheap) quantizer: the error measured,
    e(k) = ‖S (W − P1 − 𝒬(W − P1))‖² with P1 the rank-k preserved part. With per-block absmax
    scales the measured error falls much less than the left energy once the signal is preserved,
    and the spectral rule then preserves noise directions (tests/numerics/test_srr.py)."""
    if quantize is None:
        e = tail_energy(svd[1], rank)
    else:
        e = torch.empty(rank + 1, dtype=F64)
        for k in range(rank + 1):
            l1, r1 = truncate(svd, s_inv, k)
            rest = w - l1 @ r1
            e[k] = (s @ (rest - quantize(rest).to(F64))).square().sum()
    return int((e * tail.flip(0)).argmin())


@dataclass
class Split:
    """The result for one weight: Ŵ = q + L @ R."""

    q: torch.Tensor  # [K, N] dequantized
    L: torch.Tensor  # [K, r]
    R: torch.Tensor  # [r, N]
    k: int  # the preserved rank

    def error(self, w: torch.Tensor, s: torch.Tensor) -> float:
        """‖S (W − Ŵ)‖²_F."""
        return float((s @ (w.to(F64) - self.q - self.L @ self.R)).square().sum())


def srr(w: torch.Tensor, h: torch.Tensor, rank: int, quantize: Quantizer, k: int | None = None,
        probe_quantize: Quantizer | None = None, damp: float = 1e-6, seed: int = 0,
        whiten: tuple[torch.Tensor, torch.Tensor] | None = None) -> Split:
    """W [K, N], Σ or XᵀX [K, K], rank budget r, the weight quantizer -> Split.

    k: the preserved rank (None: the probe's k*, measured with probe_quantize when given, else the
    spectral rule; 0: QER; r: preserve-only). rank is capped at min(K, N). whiten: a precomputed
    (S, S⁻¹) of h, shared by linears that read one input.
    """
    w = w.to(F64)
    rank = min(rank, *w.shape)
    s, s_inv = whiten if whiten is not None else whitening(h, damp)
    svd = torch.linalg.svd(s @ w, full_matrices=False)
    if k is None:
        k = probe(w, s, s_inv, svd, rank, noise_tail(s, w.shape[1], rank, seed), probe_quantize)
    if not 0 <= k <= rank:
        raise ValueError(f"preserved rank k = {k} is outside 0..{rank}")
    l1, r1 = truncate(svd, s_inv, k)
    q = quantize(w - l1 @ r1).to(F64)
    l2, r2 = low_rank(s @ (w - l1 @ r1 - q), s_inv, rank - k)
    return Split(q, torch.cat([l1, l2], 1), torch.cat([r1, r2], 0), k)


def allocate_ranks(errors: list[torch.Tensor], costs: list[float], budget: float, step: int = 1) -> list[int]:
    """A bit budget spread over sites by measured benefit: errors[i][p] is site i's error with rank p
    (p = 0..its cap, non-increasing), costs[i] the bits one rank costs there. Greedy: `step` ranks at a
    time go to the site whose next step removes the most error per bit, while the bits last. The
    result is optimal for the budget it spends when every curve is convex in p (as a tail of sorted
    squared singular values is) and the budget ends on a step boundary."""
    ranks = [0] * len(errors)
    caps = [e.numel() - 1 for e in errors]

    def gain(i: int) -> float:  # error removed per bit by site i's next step
        p = min(ranks[i] + step, caps[i])
        return float(errors[i][ranks[i]] - errors[i][p]) / (costs[i] * (p - ranks[i]))

    left = budget
    while True:
        open_ = [i for i in range(len(errors)) if ranks[i] < caps[i]
                 and costs[i] * (min(ranks[i] + step, caps[i]) - ranks[i]) <= left]
        if not open_:
            return ranks
        best = max(open_, key=gain)
        if gain(best) <= 0:
            return ranks
        p = min(ranks[best] + step, caps[best])
        left -= costs[best] * (p - ranks[best])
        ranks[best] = p
