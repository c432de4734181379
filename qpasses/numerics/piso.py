"""PiSO: the exactly optimal scale of a symmetric weight quantizer under a quadratic objective
(docs/methods.md#piso). Torch, float64; no graph library.

A row w[D] is quantized as s·q with q = nearest point of an unscaled grid 𝒢 ∋ 0 to w / s (clamped
at the grid's ends). With H = X̃ᵀX̃ and b = H w (the "unquantized" and "self-activation" objectives,
where X̃ = X):
    ‖X w − s X q‖² = wᵀHw + E(s),   E(s) = s² β − 2 s α,   α = qᵀb,   β = qᵀHq.
q_i changes only where w_i / s crosses a midpoint m of 𝒢, at the transition scale s = w_i / m.
Between consecutive transitions q is constant and E is a parabola with its minimum at α/β clipped
into the interval; the best interval optimum is the global optimum (`optimal_scales`).

h, the curvature, comes in three modes: dense H [D, D], its diagonal [D] (β = Σ H_ii q_i²), or
None (identity: plain weight MSE, data-free).
"""

from __future__ import annotations

import torch

from qpasses.numerics import native

F64 = torch.float64
INT4 = torch.arange(-8, 8, dtype=F64)
E2M1 = torch.tensor([-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=F64)
EPS = 1e-6  # relative margin inside an interval: far above float32 rounding of w / s (6e-8)


def nearest(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest grid value to each x (clamped to the ends; a tie at a midpoint goes down)."""
    mids = (grid[1:] + grid[:-1]) / 2
    return grid[torch.bucketize(x.contiguous(), mids)]


def _diag(h: torch.Tensor | None, d: int) -> torch.Tensor:
    return torch.ones(d, dtype=F64) if h is None else (h if h.ndim == 1 else h.diagonal())


def energy(w: torch.Tensor, s: torch.Tensor, grid: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
    """E(s) = s² qᵀHq − 2 s qᵀHw for rows w [R, D] at scales s [R] (or [R, C] candidates) -> same shape as s."""
    cand = s if s.ndim == 2 else s[:, None]
    q = nearest(w[:, None, :] / cand[..., None], grid)  # [R, C, D]
    if h is not None and h.ndim == 2:
        hq = q @ h
        alpha, beta = (hq * w[:, None, :]).sum(-1), (hq * q).sum(-1)
    else:
        hd = _diag(h, w.shape[1])
        alpha, beta = (q * (hd * w)[:, None, :]).sum(-1), (q * q * hd).sum(-1)
    e = cand * cand * beta - 2 * cand * alpha
    return e if s.ndim == 2 else e[:, 0]


def _events(w: torch.Tensor, grid: torch.Tensor):
    """Transitions of every element, as s falls from +inf: t [R, D·L] (0 = padding), element index,
    the value q_i leaves and the value it reaches; sorted by t descending."""
    z = int((grid == 0).nonzero())
    up = [(grid[k], grid[k + 1]) for k in range(z, len(grid) - 1)]  # w_i > 0: 0 -> g1 -> ... outward
    down = [(grid[k + 1], grid[k]) for k in range(z - 1, -1, -1)]  # w_i < 0
    width = max(len(up), len(down))

    def table(pairs):
        pairs = pairs + [(pairs[-1][1], pairs[-1][1])] * (width - len(pairs))  # padding: no move
        frm, to = (torch.stack([torch.as_tensor(p[i], dtype=F64) for p in pairs]) for i in (0, 1))
        mid = torch.where(frm == to, torch.inf, (frm + to) / 2)
        return mid, frm, to

    (mu, fu, tu), (md, fd, td) = table(up), table(down)
    pos, neg = (w > 0)[..., None], (w < 0)[..., None]
    t = torch.where(pos, w[..., None] / mu, torch.where(neg, w[..., None] / md, torch.zeros(())))
    frm = torch.where(pos, fu, torch.where(neg, fd, torch.zeros(())))
    to = torch.where(pos, tu, torch.where(neg, td, torch.zeros(())))
    r = w.shape[0]
    t, order = t.reshape(r, -1).sort(dim=1, descending=True, stable=True)
    idx = order // width  # events are laid out element by element, `width` each
    frm, to = frm.reshape(r, -1).gather(1, order), to.reshape(r, -1).gather(1, order)
    return t, idx, frm, to


def _beta_dense(idx: torch.Tensor, delta: torch.Tensor, h: torch.Tensor, chunk: int) -> torch.Tensor:
    """β = qᵀHq after each event [R, E] (q = 0 before the first), a chunk of events at a time:
    with q and Hq as they stand at the chunk's start, event m of the chunk adds
    δ_m (2 (Hq)_{i_m} + 2 Σ_{p < m} δ_p H_{i_p i_m} + δ_m H_{i_m i_m}); at its end q takes the
    chunk's moves and Hq = q H is one matrix product (cheaper than gathering the chunk's rows of H)."""
    r, e = idx.shape
    d = h.shape[0]
    q, hq = torch.zeros(r, d, dtype=F64), torch.zeros(r, d, dtype=F64)
    inc = torch.empty(r, e, dtype=F64)
    flat, hdiag, before = h.reshape(-1), h.diagonal().contiguous(), torch.ones(chunk, chunk, dtype=F64).triu(1)
    for a in range(0, e, chunk):
        i, dl = idx[:, a:a + chunk], delta[:, a:a + chunk]
        c = i.shape[1]
        sub = flat[i[:, :, None] * d + i[:, None, :]]  # [r, p, m] = H[i_p, i_m]
        cross = (dl[:, :, None] * sub * before[:c, :c]).sum(1)  # Σ_{p < m} δ_p H[i_p, i_m]
        inc[:, a:a + c] = dl * (2 * (hq.gather(1, i) + cross) + dl * hdiag[i])
        q.scatter_add_(1, i, dl)
        hq = q @ h
    return inc.cumsum_(1)


def optimal_scales(w: torch.Tensor, grid: torch.Tensor, h: torch.Tensor | None = None,
                   compiled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows w [R, D] -> (s [R], E(s) [R]): the scale minimizing E over all s > 0, exactly.

    h: dense [D, D] (symmetric PSD), diagonal [D], or None (identity). An all-zero row gets s = 1.
    Work: sorting R·D·L events (L = grid transitions per sign, 8 for INT4), then O(R·D·L) in
    diagonal mode or O(R·D²·L) dense. A dense H goes to the compiled sweep (numerics.native, the
    same algorithm one row at a time, ~6x faster) when it is built and `compiled`; this torch
    version is its reference.
    """
    if compiled and h is not None and h.ndim == 2 and native.library() is not None:
        return native.piso_dense(w, h, grid)
    w = w.to(F64)
    t, idx, frm, to = _events(w, grid)
    delta = to - frm
    hd = _diag(h, w.shape[1])
    b = w * hd if h is None or h.ndim == 1 else w @ h
    alpha = (delta * b.gather(1, idx)).cumsum(1)
    if h is not None and h.ndim == 2:
        chunk = 8  # events per step: fastest on CPU for D = 64 (8: 70 µs a row; 4 and 16 slower)
        beta = _beta_dense(idx, delta, h.to(F64), chunk)
    else:
        beta = (hd.gather(0, idx.reshape(-1)).reshape(idx.shape) * (to * to - frm * frm)).cumsum(1)
    hi, lo = t, torch.cat([t[:, 1:], torch.zeros_like(t[:, :1])], 1)
    top, bottom = hi * (1 - EPS), lo * (1 + EPS)
    ok = (beta > 0) & (top > bottom)
    s = torch.minimum(torch.maximum(alpha / beta.clamp_min(1e-300), bottom), top)
    e = torch.where(ok, s * s * beta - 2 * s * alpha, torch.inf)
    best = e.argmin(1, keepdim=True)
    s_best, e_best = s.gather(1, best)[:, 0], e.gather(1, best)[:, 0]
    empty = ~torch.isfinite(e_best)
    return torch.where(empty, 1.0, s_best), torch.where(empty, 0.0, e_best)


def grid_scales(w: torch.Tensor, grid: torch.Tensor, h: torch.Tensor | None = None, points: int = 100,
                lo: float = 0.5, hi: float = 1.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The brute-force baseline: the best of `points` scales r·amax/max|𝒢₊| for r in [lo, hi]."""
    w = w.to(F64)
    base = w.abs().amax(1) / grid.max()
    base = torch.where(base > 0, base, 1.0)
    cand = base[:, None] * torch.linspace(lo, hi, points, dtype=F64)
    best_s, best_e = base.clone(), torch.full_like(base, torch.inf)
    for a in range(0, points, 16):
        e = energy(w, cand[:, a:a + 16], grid, h)
        i = e.argmin(1, keepdim=True)
        better = e.gather(1, i)[:, 0] < best_e
        best_s = torch.where(better, cand[:, a:a + 16].gather(1, i)[:, 0], best_s)
        best_e = torch.where(better, e.gather(1, i)[:, 0], best_e)
    return best_s, best_e


def optimal_exponents(w: torch.Tensor, e0: torch.Tensor, h: torch.Tensor | None = None, grid: torch.Tensor = E2M1,
                      below: int = 2, above: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Power-of-two scales (MXFP4's E8M0): blocks w [R, 32], the OCP floor exponents e0 [R] ->
    (e [R], E(2^e) [R]), the best exponent in e0-below .. e0+above, the window widened while the
    best sits at its end (exact over every exponent that can matter), clamped to [-127, 127]."""
    w, e0 = w.to(F64), e0.to(torch.int64)
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # offset -> (exponents, energies)

    def add(d: int) -> None:
        e = (e0 + d).clamp(-127, 127)
        found[d] = e, energy(w, torch.ldexp(torch.ones_like(w[:, 0]), e), grid, h)

    for d in range(-below, above + 1):
        add(d)
    while True:
        ds = sorted(found)
        en = torch.stack([found[d][1] for d in ds], 1)
        best = en.argmin(1)
        # widen where the best is strictly better than its inner neighbour at an end of the window
        grow_lo = bool(((best == 0) & (en[:, 0] < en[:, 1])).any()) and ds[0] > -12
        grow_hi = bool(((best == len(ds) - 1) & (en[:, -1] < en[:, -2])).any()) and ds[-1] < 12
        if not (grow_lo or grow_hi):
            break
        if grow_lo:
            add(ds[0] - 1)
        if grow_hi:
            add(ds[-1] + 1)
    ex = torch.stack([found[d][0] for d in ds], 1)
    pick = torch.where(en.gather(1, best[:, None])[:, 0] < en[:, ds.index(0)], best, ds.index(0))  # e0 wins ties
    return ex.gather(1, pick[:, None])[:, 0], en.gather(1, pick[:, None])[:, 0]
