"""SRR (numerics.srr) against numpy: the whitening, the Eckart–Young pieces, the closed form for a
fixed k, the two ends k = 0 (QER) and k = r (preserve-only), and the probe's k* on the flat part
of the brute-force error curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qpasses.numerics import srr

F64 = torch.float64


def rtn3(w: torch.Tensor) -> torch.Tensor:
    """3-bit symmetric round to nearest per output column of W [K, N] (the test's quantizer)."""
    s = (w.abs().amax(0, keepdim=True) / 3).clamp_min(1e-12)
    return (w / s).round().clamp(-4, 3) * s


def layer(k=48, n=40, signal=6, seed=0, spread=1.5):
    """W = a low-rank signal + noise; input channel scales spread over 10^spread."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, signal, generator=g, dtype=F64) @ torch.randn(signal, n, generator=g, dtype=F64)
    w += 0.3 * torch.randn(k, n, generator=g, dtype=F64)
    x = torch.randn(4 * k, k, generator=g, dtype=F64) * torch.logspace(0, spread, k, dtype=F64)
    return w, x.T @ x


def test_whitening_is_the_damped_square_root_and_its_inverse():
    _, h = layer()
    s, s_inv = srr.whitening(h, damp=1e-6)
    lam = 1e-6 * float(h.diagonal().mean())
    assert torch.allclose(s @ s, h + lam * torch.eye(h.shape[0], dtype=F64), rtol=1e-9, atol=1e-7 * float(h.max()))
    assert torch.allclose(s @ s_inv, torch.eye(h.shape[0], dtype=F64), atol=1e-8)


def test_a_dead_input_channel_stays_finite():
    w, h = layer()
    h[3, :] = h[:, 3] = 0
    s, s_inv = srr.whitening(h)
    assert torch.isfinite(s_inv).all()
    out = srr.srr(w, h, 8, rtn3)
    assert torch.isfinite(out.L).all() and torch.isfinite(out.R).all()


def test_low_rank_is_eckart_young_in_the_whitened_norm():
    w, h = layer()
    s, s_inv = srr.whitening(h)
    a = (s @ w).numpy()
    u, sv, vt = np.linalg.svd(a, full_matrices=False)
    for p in (0, 1, 5, 12):
        L, R = srr.low_rank(s @ w, s_inv, p)
        assert L.shape == (w.shape[0], p) and R.shape == (p, w.shape[1])
        expect = s_inv.numpy() @ (u[:, :p] * sv[:p]) @ vt[:p]
        np.testing.assert_allclose((L @ R).numpy(), expect, atol=1e-9 * np.abs(expect).max(initial=1))
        err = float((s @ (w - L @ R)).square().sum())
        assert err == pytest.approx(float((sv[p:] ** 2).sum()), rel=1e-9)


def test_tail_energy():
    sv = torch.tensor([3.0, 2.0, 1.0], dtype=F64)
    np.testing.assert_allclose(srr.tail_energy(sv, 4).numpy(), [1, 5 / 14, 1 / 14, 0, 0], atol=1e-15)


@pytest.mark.parametrize("k", [0, 3, 8])
def test_a_fixed_k_equals_the_closed_form(k):
    w, h = layer()
    r = 8
    out = srr.srr(w, h, r, rtn3, k=k)
    s, s_inv = (t.numpy() for t in srr.whitening(h))
    wn = w.numpy()

    def svd_r(a, p):
        u, sv, vt = np.linalg.svd(a, full_matrices=False)
        return s_inv @ (u[:, :p] * sv[:p]) @ vt[:p]

    p1 = svd_r(s @ wn, k)
    q = rtn3(torch.from_numpy(wn - p1)).numpy()
    p2 = svd_r(s @ (wn - p1 - q), r - k)
    assert out.k == k and out.L.shape == (w.shape[0], r)
    np.testing.assert_allclose(out.q.numpy(), q, atol=1e-9)
    np.testing.assert_allclose((out.L @ out.R).numpy(), p1 + p2, atol=1e-8 * np.abs(wn).max())


def test_k0_is_qer_and_kr_is_preserve_only():
    w, h = layer()
    r = 8
    s, s_inv = srr.whitening(h)
    qer = srr.srr(w, h, r, rtn3, k=0)
    assert torch.equal(qer.q, rtn3(w))  # QER: quantize W itself, then fit its error
    L, R = srr.low_rank(s @ (w - rtn3(w)), s_inv, r)
    assert torch.allclose(qer.L @ qer.R, L @ R, atol=1e-10)
    keep = srr.srr(w, h, r, rtn3, k=r)
    L, R = srr.low_rank(s @ w, s_inv, r)
    assert torch.allclose(keep.L @ keep.R, L @ R, atol=1e-10)  # preserve-only: nothing reconstructed
    assert torch.allclose(keep.q, rtn3(w - L @ R))


def test_srr_is_never_worse_than_quantizing_alone_and_k0_reconstructs():
    w, h = layer()
    s, _ = srr.whitening(h)
    plain = float((s @ (w - rtn3(w))).square().sum())
    for k in (0, 4, None):
        assert srr.srr(w, h, 8, rtn3, k=k).error(w, s) < plain


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spread", [0.0, 1.5])
def test_the_probe_lands_on_the_flat_part_of_the_brute_force_curve(seed, spread):
    """A rank-6 signal with noise under 3-bit RTN, isotropic and anisotropic inputs: the probe's k*
    (quantization error measured per k) gives an error within 5% of the brute-force best k."""
    w, h = layer(k=64, n=96, signal=6, seed=seed, spread=spread)
    r = 16
    s, _ = srr.whitening(h)
    errors = [srr.srr(w, h, r, rtn3, k=k).error(w, s) for k in range(r + 1)]
    chosen = srr.srr(w, h, r, rtn3, probe_quantize=rtn3)
    assert chosen.error(w, s) <= 1.05 * min(errors)
    assert errors[0] > 1.5 * min(errors)  # the case is one where preserving matters


def test_the_spectral_rule_is_the_specs_formula():
    w, h = layer(k=64, n=96, signal=6)
    s, s_inv = srr.whitening(h)
    r = 16

    def rho(a, p):
        energy = np.linalg.svd(a, compute_uv=False) ** 2
        return energy[p:].sum() / energy.sum()

    noise = torch.rand(w.shape, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1
    sw, se = (s @ w).numpy(), (s @ noise).numpy()
    expect = int(np.argmin([rho(sw, k) * rho(se, r - k) for k in range(r + 1)]))
    assert srr.srr(w, h, r, rtn3).k == expect


def test_bad_k_is_refused():
    w, h = layer()
    with pytest.raises(ValueError, match="outside 0..8"):
        srr.srr(w, h, 8, rtn3, k=9)


def test_rank_allocation_is_the_best_split_of_a_budget():
    """On convex error curves: with equal costs the greedy allocation is the exhaustive optimum; with
    unequal costs it is at least as good as the optimum of a budget one rank's cost smaller (up to its
    first skip it is the fractional optimum)."""
    import itertools

    g = torch.Generator().manual_seed(3)
    curves = [srr.tail_energy(torch.rand(12, generator=g, dtype=F64).sort(descending=True).values, 8) * w
              for w in (1.0, 3.0, 0.5)]

    def best(costs, budget):
        return min(sum(float(c[p]) for c, p in zip(curves, ps)) for ps in itertools.product(range(9), repeat=3)
                   if sum(c * p for c, p in zip(costs, ps)) <= budget)

    for costs in ([2.0, 2.0, 2.0], [2.0, 5.0, 1.0]):
        for budget in (0, 7, 13, 30, 1e9):
            ranks = srr.allocate_ranks(curves, costs, budget)
            assert sum(c * r for c, r in zip(costs, ranks)) <= budget
            error = sum(float(c[p]) for c, p in zip(curves, ranks))
            if len(set(costs)) == 1:
                assert error == pytest.approx(best(costs, budget), abs=1e-12)
            else:
                assert error <= best(costs, max(0.0, budget - max(costs))) + 1e-12
    assert srr.allocate_ranks(curves, [1.0] * 3, 1e9) == [8, 8, 8]
    assert all(r % 4 == 0 for r in srr.allocate_ranks(curves, [1.0] * 3, 10, step=4))
