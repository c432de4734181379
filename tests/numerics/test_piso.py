"""PiSO (numerics.piso) against brute force, for every curvature mode and both grids; the E8M0
exponent search against every exponent; GPTQ (numerics.gptq) against round to nearest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qpasses.formats.mxfp4 import e2m1_round
from qpasses.numerics import gptq, native, piso

F64 = torch.float64
MODES = ("identity", "diag", "dense")
GRIDS = {"int4": piso.INT4, "e2m1": piso.E2M1}


def problem(seed: int, rows: int = 12, d: int = 16, mode: str = "dense"):
    """Random rows with an outlier, and H = XᵀX of correlated inputs with uneven channel scales."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, d, generator=gen, dtype=F64)
    w[:, 0] *= 4
    x = torch.randn(48, d, generator=gen, dtype=F64) @ (
        torch.eye(d, dtype=F64) + 0.5 * torch.randn(d, d, generator=gen, dtype=F64))
    x *= torch.rand(d, generator=gen, dtype=F64) * 3
    h = x.T @ x
    return w, {"identity": None, "diag": h.diagonal().clone(), "dense": h}[mode]


def brute_force(w, grid, h):
    """min E over a dense scale grid plus both sides of every transition scale (to the last breakpoint)."""
    mids = (grid[1:] + grid[:-1]) / 2
    t = (w[:, :, None] / mids[mids != 0]).reshape(w.shape[0], -1)
    t = t.clamp_min(0)
    dense = w.abs().amax(1, keepdim=True) / grid.max() * torch.linspace(0.02, 3, 4000, dtype=F64)
    cand = torch.cat([dense, t * (1 + 1e-7), t * (1 - 1e-7)], 1).clamp_min(1e-12)
    return piso.energy(w, cand, grid, h).amin(1)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grid", GRIDS)
def test_piso_equals_brute_force_and_is_never_worse_than_rtn_or_the_grid(mode, grid, compiled):
    g = GRIDS[grid]
    for seed in range(4):
        w, h = problem(seed, mode=mode)
        s, e = piso.optimal_scales(w, g, h, compiled=compiled)
        assert torch.allclose(piso.energy(w, s, g, h), e, rtol=1e-10, atol=1e-9)  # E is what s gives
        best = brute_force(w, g, h)
        scale = best.abs().clamp_min(1e-9)
        assert ((e - best) / scale <= 1e-7).all()  # never above any candidate
        assert ((best - e) / scale <= 1e-6).all()  # and the candidates reach it
        rtn = piso.energy(w, w.abs().amax(1) / g.max(), g, h)
        assert (e <= rtn + 1e-9 * rtn.abs()).all()
        _, grid_e = piso.grid_scales(w, g, h, points=200)
        assert (e <= grid_e + 1e-9 * grid_e.abs()).all()


@pytest.mark.parametrize("grid", GRIDS)
def test_the_compiled_sweep_equals_the_torch_one(grid):
    # The package builds numerics.native; the sweep there is the torch algorithm one row at a time.
    assert native.library() is not None
    g = GRIDS[grid]
    for seed in range(3):
        w, h = problem(seed, rows=40, d=64)
        w[0] = 0  # an all-zero row
        # on the grid: tied events
        w[1] = g[torch.randint(len(g), (64,), generator=torch.Generator().manual_seed(seed))] * 0.25
        w[2, 5:] = 0
        s_c, e_c = piso.optimal_scales(w, g, h)
        s_t, e_t = piso.optimal_scales(w, g, h, compiled=False)
        torch.testing.assert_close(s_c, s_t, rtol=1e-12, atol=0)
        torch.testing.assert_close(e_c, e_t, rtol=1e-10, atol=1e-12)
        assert s_c[0] == 1 and e_c[0] == 0


def test_an_all_zero_row_gets_scale_one():
    w = torch.zeros(2, 8, dtype=F64)
    w[1, 3] = 0.5
    s, e = piso.optimal_scales(w, piso.INT4)
    assert s[0] == 1.0 and e[0] == 0.0
    assert piso.nearest(w[1] / s[1], piso.INT4)[3] * s[1] == pytest.approx(0.5)  # one weight: exact


def test_nearest_is_the_formats_rounding_away_from_ties():
    x = torch.linspace(-9.3, 9.3, 997, dtype=F64)
    assert torch.equal(piso.nearest(x, piso.INT4), x.round().clamp(-8, 7))
    mag = torch.from_numpy(e2m1_round(np.abs(x.numpy()).astype(np.float32)).astype(np.float64))
    assert torch.equal(piso.nearest(x, piso.E2M1), torch.sign(x) * mag)


@pytest.mark.parametrize("mode", MODES)
def test_exponent_search_is_the_best_power_of_two(mode):
    w, h = problem(7, rows=20, d=32, mode=mode)
    w[3] *= 1e-3  # a block far from the others' magnitude
    e0 = torch.floor(torch.log2(w.abs().amax(1))).long() - 2
    e, energy = piso.optimal_exponents(w, e0, h)
    every = torch.stack([piso.energy(w, torch.ldexp(torch.ones(20, dtype=F64), e0 + d), piso.E2M1, h)
                         for d in range(-20, 8)], 1)
    assert torch.allclose(energy, every.amin(1), rtol=1e-12)
    assert torch.allclose(piso.energy(w, torch.ldexp(torch.ones(20, dtype=F64), e), piso.E2M1, h), energy)
    floor = every[:, 20]  # d = 0: the OCP floor rule
    assert (energy <= floor).all() and (energy < floor).any()


def layer(seed=0, n=24, k=96):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, k, generator=gen, dtype=F64) @ (
        torch.eye(k, dtype=F64) + 0.3 * torch.randn(k, k, generator=gen, dtype=F64) / k**0.5)
    x[:, :3] *= 8
    return torch.randn(n, k, generator=gen, dtype=F64), x.T @ x


def output_error(w, wq, h):
    d = w - wq
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


def int4_round(col, s):
    return piso.nearest(col / s, piso.INT4) * s


def amax_scales(w, h):
    return w.abs().amax(1) / 7


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group", [32, 96])
def test_gptq_lowers_the_output_error_and_its_weights_sit_on_their_groups_scales(act_order, group):
    w, h = layer()
    rtn = torch.cat([int4_round(w[:, a:a + group].T, amax_scales(w[:, a:a + group], None)).T
                     for a in range(0, 96, group)], 1)
    wq, scales = gptq.gptq(w, h, group, amax_scales, piso.INT4, act_order=act_order)
    assert scales.shape == (24, 96 // group)
    assert output_error(w, wq, h) < 0.8 * output_error(w, rtn, h)
    for j in range(96 // group):
        q = wq[:, j * group:(j + 1) * group] / scales[:, j:j + 1]
        assert torch.allclose(q, q.round(), atol=1e-9) and q.round().min() >= -8 and q.round().max() <= 7


def test_piso_inside_gptq_beats_gptq_with_amax_scales():
    w, h = layer(1)
    with_amax, _ = gptq.gptq(w, h, 32, amax_scales, piso.INT4)
    with_piso, _ = gptq.gptq(w, h, 32, lambda wg, hg: piso.optimal_scales(wg, piso.INT4, hg)[0], piso.INT4)
    assert output_error(w, with_piso, h) < output_error(w, with_amax, h)


@pytest.mark.parametrize("group", [32, 96])  # 96: one group, blocks of `lazy` columns
def test_the_compiled_gptq_loop_gives_the_torch_loops_bits(group):
    w, h = layer(4)
    w[3] = 0
    for grid, scales in (
        (piso.INT4, amax_scales),
        (piso.E2M1, lambda wg, hg: 2.0 ** torch.ceil(torch.log2(wg.abs().amax(1).clamp_min(1e-9) / 6))),
    ):
        want = gptq.gptq(w, h, group, scales, grid, lazy=40, compiled=False)
        got = gptq.gptq(w, h, group, scales, grid, lazy=40)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_gptq_zeroes_columns_that_never_see_input():
    w, h = layer(2)
    h[5, :] = h[:, 5] = 0
    wq, _ = gptq.gptq(w, h, 32, amax_scales, piso.INT4)
    assert (wq[:, 5] == 0).all()


def test_gptq_says_when_h_is_not_positive_definite():
    w, h = layer(3)
    with pytest.raises(ValueError, match="raise damp"):
        gptq.gptq(w, -h, 32, amax_scales, piso.INT4, damp=0.0)
