"""Channel smoothing scales for one linear y = x Wᵀ: policies, error, search, training
(docs/methods.md#smoothing-scales).

Identity relied on: (x diag(1/s) R)(W diag(s) R)ᵀ = x Wᵀ for any s > 0 and orthogonal R, so the
scales only move quantization difficulty between activations and weights (scale-then-rotate).

    policy      s_j(α, q) = max(a_j(q)^α / max(w_j, 1e-5)^(1-α), 1e-5)
                a_j(q) the q-quantile of |x_:,j| (q = 1: the max), w_j = max_o |W[o, j]|
    error       e(s) = ||X Wᵀ − Qa(X diag(1/s) R) Qw(W diag(s) R)ᵀ||² / ||X Wᵀ||²
                with the deployment quantizers (INT4 per token / per channel, or MXFP4)
    training    s = s0 ⊙ exp(θ), |θ_j| ≤ log β, mean(θ) = 0 (the gauge s → c·s), Adam on
                straight-through quantizers, kept only where the held-out error improves

Torch only (autograd for the training); no graph library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from qpasses.formats.spec import ActFormat
from qpasses.numerics.fake_quant import QMAX
from qpasses.numerics.rotation import Rotation

FLOOR = 1e-5  # the clamp of SmoothQuant / SmoothRot on w_j and on s
# The spec's grid starts at 0.9; q = 0.9 needs an exact top-k buffer of 10% of the calibration
# tokens per channel (6555 x 1536 floats per down_proj at 65536 tokens) and made collection 10x
# slower, so the default starts at 0.99 (k = 657); pass `quantiles` to search lower.
QGRID = (0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)
AGRID = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.20, 0.25, ..., 0.80


def policy_scales(a: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = max(a^α / max(w, 1e-5)^(1-α), 1e-5), float64 [K]."""
    a, w = np.asarray(a, np.float64), np.maximum(np.asarray(wmax, np.float64), FLOOR)
    return np.maximum(a**alpha / w ** (1.0 - alpha), FLOOR)


def column_absmax(w: np.ndarray) -> np.ndarray:
    """w_j = max_o |W[o, j]| of W [N, K]."""
    return np.abs(np.asarray(w)).max(axis=0)


def _round_ste(u: torch.Tensor) -> torch.Tensor:
    """round(u) forward, identity backward."""
    return u + (torch.round(u) - u).detach()


def fake_quant(x: torch.Tensor, fmt: ActFormat | None) -> torch.Tensor:
    """Symmetric INT (scale amax/qmax) or MXFP4 (floor rule) along the last dim, differentiable:
    rounding is straight-through, the scale follows amax (MXFP4's power of two as amax/amax·2^e).
    The forward equals numerics.fake_quant.fake_quant_activation; None is the identity."""
    if fmt is None:
        return x
    k = x.shape[-1]
    block = fmt.block_size or k
    if k % block:
        raise ValueError(f"block {block} does not divide the width {k}")
    xb = x.reshape(*x.shape[:-1], k // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    live = amax > 0
    safe = torch.where(live, amax, torch.ones_like(amax))
    if fmt.kind == "mxfp4":
        e = torch.floor(torch.log2(safe.detach())) - 2.0
        scale = torch.exp2(e) * safe / safe.detach()
        u = xb / scale
        step = torch.where(u.abs() < 2.0, 0.5, torch.where(u.abs() < 4.0, 1.0, 2.0)).detach()
        q = torch.clamp(_round_ste(u / step) * step, -6.0, 6.0)
    else:
        qmax = QMAX[fmt.kind]
        scale = safe / qmax
        q = torch.clamp(_round_ste(xb / scale), -qmax - 1.0, qmax)
    return torch.where(live, q * scale, torch.zeros_like(xb)).reshape(x.shape)


def rotate(x: torch.Tensor, rotation: Rotation | None) -> torch.Tensor:
    """x R in torch (the Kronecker form of numerics.rotation), float32; None is the identity."""
    if rotation is None:
        return x
    if rotation.signs is not None:
        x = x * torch.tensor(rotation.signs, dtype=x.dtype)
    y = x.reshape(*x.shape[:-1], -1, rotation.block) @ torch.tensor(rotation.right, dtype=x.dtype)
    if rotation.left is not None:
        y = torch.tensor(rotation.left.T, dtype=x.dtype) @ y
    return y.reshape(x.shape)


@dataclass
class LayerProblem:
    """x [T, K] float32 tokens, w [N, K] the (unrotated) weight, R the rotation after the scales,
    and the quantizers of activations and weights (None = kept in float)."""

    x: torch.Tensor
    w: torch.Tensor
    rotation: Rotation | None = None
    act: ActFormat | None = None
    weight: ActFormat | None = None

    def __post_init__(self):
        self.x = torch.as_tensor(np.asarray(self.x, np.float32))
        self.w = torch.as_tensor(np.asarray(self.w, np.float32))
        self.ref = self.x @ self.w.T
        self.ref_energy = float((self.ref.double() ** 2).sum())
        if not self.ref_energy > 0:
            raise ValueError("the layer output X Wᵀ is all zero on these tokens: no error to minimize")

    def output(self, s: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x if rows is None else self.x[rows]
        xq = fake_quant(rotate(x / s, self.rotation), self.act)
        wq = fake_quant(rotate(self.w * s, self.rotation), self.weight)
        return xq @ wq.T

    def loss(self, s: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """e(s) on all tokens or the given rows (differentiable in s)."""
        ref = self.ref if rows is None else self.ref[rows]
        return ((self.output(s, rows) - ref) ** 2).sum() / (ref**2).sum()

    def error(self, s) -> float:
        """e(s) on all tokens, s [K] (array or tensor)."""
        with torch.no_grad():
            return float(self.loss(torch.as_tensor(np.asarray(s, np.float32))))


def grid_search(problem: LayerProblem, stats: dict[float, np.ndarray], wmax: np.ndarray,
                alphas: Iterable[float], quantiles: Iterable[float]) -> list[tuple[float, float, float]]:
    """[(α, q, e)] for every pair, best first; stats maps q -> a(q) [K] of this layer."""
    rows = [(a, q, problem.error(policy_scales(stats[q], wmax, a))) for q in quantiles for a in alphas]
    return sorted(rows, key=lambda r: r[2])


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    lr: float = 5e-3
    beta: float = 4.0  # box: s0/β ≤ s ≤ s0·β
    batch: int = 1024  # tokens per step
    every: int = 25  # held-out check period (steps)
    seed: int = 0


def train_scales(problem: LayerProblem, heldout: LayerProblem, s0: np.ndarray, cfg: TrainConfig = TrainConfig(),
                 progress=None) -> tuple[np.ndarray, dict]:
    """s = s0 ⊙ exp(θ) trained on `problem`, returning the θ with the lowest held-out error seen
    (θ = 0 included, so never worse than s0 on `heldout`) and a summary."""
    s0_t = torch.as_tensor(np.asarray(s0, np.float32))
    theta = torch.zeros_like(s0_t, requires_grad=True)
    bound = math.log(cfg.beta)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    t = problem.x.shape[0]
    start = heldout.error(s0_t)
    best, best_theta, best_step, history = start, theta.detach().clone(), 0, [(0, start)]
    for step in range(1, cfg.steps + 1):
        rows = torch.randperm(t, generator=gen)[: cfg.batch]
        loss = problem.loss(s0_t * torch.exp(theta), rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            theta.clamp_(-bound, bound)
            theta.sub_(theta.mean())
        if step % cfg.every == 0 or step == cfg.steps:
            e = heldout.error(s0_t * torch.exp(theta.detach()))
            history.append((step, e))
            if e < best:
                best, best_theta, best_step = e, theta.detach().clone(), step
            if progress is not None:
                progress(step, float(loss.detach()), e)
    s = (s0_t * torch.exp(best_theta)).double().numpy()
    at_bound = int((best_theta.abs() >= bound - 1e-6).sum())
    return s, {"start": start, "best": best, "step": best_step, "at_bound": at_bound, "history": history}
