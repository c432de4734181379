"""numerics.smoothing: the policy formula, the straight-through quantizers, the identity the
scales rely on, the gauge, the grid search on a planted outlier, and training's guarantee."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qpasses.formats.spec import ActFormat
from qpasses.numerics import smoothing
from qpasses.numerics.fake_quant import fake_quant_activation
from qpasses.numerics.rotation import Rotation

MX, INT4 = ActFormat("mxfp4", 32), ActFormat("int4", 0)


def layer(t=512, k=96, n=48, outlier=None, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, k)).astype(np.float32)
    if outlier is not None:
        x[:, outlier] *= 40.0
    return x, (rng.standard_normal((n, k)) * 0.05).astype(np.float32)


def test_policy_is_the_smoothquant_formula_with_its_clamps():
    a, w = np.array([4.0, 0.0, 9.0]), np.array([1.0, 2.0, 0.0])
    s = smoothing.policy_scales(a, w, 0.5)
    np.testing.assert_allclose(s, [2.0, 1e-5, 3.0 / np.sqrt(1e-5)])
    np.testing.assert_allclose(smoothing.policy_scales(a[:1], w[:1] * 4, 0.0), [0.25])  # alpha 0: 1 / w
    np.testing.assert_allclose(smoothing.column_absmax(np.array([[1.0, -3.0], [-2.0, 0.5]])), [2.0, 3.0])


@pytest.mark.parametrize("fmt", [MX, INT4, ActFormat("int4", 32)], ids=str)
def test_straight_through_quantizer_forward_is_the_format(fmt):
    x = torch.randn(64, 128) * torch.rand(128) * 3
    x[3] = 0.0  # an all-zero row stays zero
    assert torch.equal(smoothing.fake_quant(x, fmt), fake_quant_activation(x, fmt))


@pytest.mark.parametrize("fmt", [MX, INT4], ids=str)
def test_gradient_reaches_the_scales(fmt):
    x, w = layer()
    p = smoothing.LayerProblem(x, w, None, fmt, fmt)
    s = torch.ones(x.shape[1], requires_grad=True)
    p.loss(s).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_torch_rotation_matches_numpy():
    rot = Rotation.hadamard(96, 0, seed=3)
    x = np.random.default_rng(1).standard_normal((5, 96)).astype(np.float32)
    np.testing.assert_allclose(smoothing.rotate(torch.from_numpy(x), rot).numpy(), rot.apply(x), atol=1e-5)


def test_scale_then_rotate_preserves_the_product():
    """(x diag(1/s) R)(W diag(s) R)ᵀ = x Wᵀ: without quantizers the error is float noise."""
    x, w = layer()
    s = np.exp(np.random.default_rng(2).uniform(-2, 2, x.shape[1]))
    p = smoothing.LayerProblem(x, w, Rotation.hadamard(96, 0, seed=1))
    assert p.error(s) < 1e-11


def test_power_of_two_gauge_leaves_the_mxfp4_error_bitwise_unchanged():
    x, w = layer(outlier=5)
    p = smoothing.LayerProblem(x, w, Rotation.hadamard(96, 32, seed=0), MX, MX)
    s = smoothing.policy_scales(np.abs(x).max(0), smoothing.column_absmax(w), 0.5)
    assert p.error(s) == p.error(4.0 * s) == p.error(s / 8.0)


@pytest.mark.parametrize("fmt", [MX, INT4], ids=str)
def test_grid_search_finds_the_better_policy_on_a_planted_outlier(fmt):
    x, w = layer(outlier=7)
    p = smoothing.LayerProblem(x, w, None, fmt, fmt)
    qs = (0.99, 1.0)
    stats = {q: np.quantile(np.abs(x), q, axis=0) for q in qs}
    table = smoothing.grid_search(p, stats, smoothing.column_absmax(w), smoothing.AGRID, qs)
    best = table[0][2]
    assert [r[2] for r in table] == sorted(r[2] for r in table)
    assert best <= p.error(smoothing.policy_scales(stats[1.0], smoothing.column_absmax(w), 0.5))
    assert best < 0.8 * p.error(np.ones(x.shape[1]))  # smoothing the outlier channel pays


@pytest.mark.parametrize("lr", [5e-3, 3.0])  # 3.0: steps that only make it worse
def test_training_never_returns_a_worse_heldout_error(lr):
    x, w = layer(t=768, outlier=3)
    calib = smoothing.LayerProblem(x[:512], w, Rotation.hadamard(96, 32, seed=0), MX, MX)
    held = smoothing.LayerProblem(x[512:], w, Rotation.hadamard(96, 32, seed=0), MX, MX)
    s0 = smoothing.policy_scales(np.abs(x[:512]).max(0), smoothing.column_absmax(w), 0.5)
    cfg = smoothing.TrainConfig(steps=40, lr=lr, batch=256, every=10)
    s, info = smoothing.train_scales(calib, held, s0, cfg)
    assert info["best"] <= info["start"] == pytest.approx(held.error(s0))
    assert held.error(s) == pytest.approx(info["best"], rel=1e-6)
    theta = np.log(s / s0)
    assert np.abs(theta).max() <= np.log(cfg.beta) + 1e-5
    if lr == 5e-3:
        assert info["best"] < info["start"]


def test_a_layer_with_no_output_is_refused():
    with pytest.raises(ValueError, match="all zero"):
        smoothing.LayerProblem(np.zeros((4, 8), np.float32), np.ones((2, 8), np.float32))
