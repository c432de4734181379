"""TORQ: Givens equalization of block energies, max-entropy R32, and the layer-error gate on heavy-tailed data."""

import numpy as np
import pytest

from qpasses.formats.act import fake_quant_activation_np
from qpasses.numerics.hadamard import hadamard_matrix
from qpasses.numerics.rotation import Rotation
from qpasses.numerics.torq import (
    MXFP4,
    block_gram,
    code_entropy,
    equalize_blocks,
    intra_candidates,
    layer_error,
    torq_rotation,
)


def heavy_tailed(k, outliers, t=256, seed=0):
    """Student-t (3 dof) tokens [t, k] with lognormal channel scales and a few 30x outlier channels; W [64, k]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(3, (t, k)) * np.exp(rng.normal(0, 0.5, k))
    x[:, outliers] *= 30
    return x.astype(np.float32), rng.standard_normal((64, k)) / np.sqrt(k)


@pytest.fixture(scope="module", params=[(576, [5, 40, 41]), (64, [3])], ids=["576", "64"])
def site(request):
    x, w = heavy_tailed(*request.param)
    gram = x.astype(np.float64).T @ x / len(x)
    rot, info = torq_rotation(block_gram(gram), x, w, seed=0)
    return x, w, gram, rot, info


def test_block_gram_pools_positions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 96))
    c = block_gram(x.T @ x)
    xb = x.reshape(10, 3, 32)
    np.testing.assert_allclose(c, np.einsum("tbp,tcp->bc", xb, xb), rtol=1e-12)
    with pytest.raises(ValueError, match="divisible by 32"):
        block_gram(np.eye(48))


@pytest.mark.parametrize("n", [18, 48, 2])
def test_equalize_blocks_makes_energies_equal(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 3 * n)) * np.exp(np.linspace(-1.5, 1.5, n))[:, None]  # spread block energies
    c = a @ a.T
    u = equalize_blocks(c)
    t = np.trace(c) / n
    assert np.abs(u @ u.T - np.eye(n)).max() <= 1e-12
    assert np.abs(np.diag(u.T @ c @ u) - t).max() <= 1e-9 * t
    assert np.diag(c).max() / np.diag(c).min() > 5


def test_equalize_blocks_leaves_equal_energies_alone():
    np.testing.assert_array_equal(equalize_blocks(np.eye(6) * 3), np.eye(6))
    np.testing.assert_array_equal(equalize_blocks(np.zeros((4, 4))), np.eye(4))


def test_code_entropy_counts_signed_e2m1_values():
    block = np.zeros(32, np.float32)
    block[0], block[16:] = 4.0, -0.0  # codes: one 4, 31 zeros (±0 merged)
    p = 1 / 32
    assert code_entropy(block[None], Rotation.identity(32)) == pytest.approx(-p * np.log2(p) - (1 - p) * np.log2(1 - p))
    assert code_entropy(np.tile([4.0, -2.0], 16)[None], Rotation.identity(32)) == pytest.approx(1.0)


def test_candidates():
    cands = intra_candidates(seed=3, count=4)
    assert [name for name, _ in cands][:3] == ["I", "H32", "diag(σ0)·H32"] and len(cands) == 6
    for _, r in cands:
        assert np.abs(r @ r.T - np.eye(32)).max() <= 1e-12
    # signs after the Hadamard only flip output signs: same quantized magnitudes, same layer error
    x, w = heavy_tailed(64, [3])
    h = Rotation(64, hadamard_matrix(32) / np.sqrt(32))
    after = Rotation(64, h.right * np.where(np.arange(32) % 3, 1.0, -1.0))
    np.testing.assert_array_equal(np.abs(fake_quant_activation_np(after.apply(x), MXFP4)),
                                  np.abs(fake_quant_activation_np(h.apply(x), MXFP4)))
    assert layer_error(x, w, after) == layer_error(x, w, h)

def test_torq_rotation_is_orthogonal(site):
    x, _, gram, rot, info = site
    u = equalize_blocks(block_gram(gram))
    for r in (rot, Rotation(rot.size, rot.right, u)):  # the gate may have dropped U: check U ⊗ R32 too
        m = r.matrix()
        assert np.abs(m @ m.T - np.eye(rot.size)).max() <= 1e-6
    energies = (Rotation(rot.size, np.eye(32), u).apply(x.astype(np.float64)) ** 2).reshape(len(x), -1, 32).sum((0, 2))
    np.testing.assert_allclose(energies / len(x), np.trace(block_gram(gram)) / len(u), rtol=1e-6)
    assert info["energy_spread_before"] > 10

def test_chosen_entropy_beats_identity(site):
    x, _, _, rot, info = site
    h = info["entropy"]
    assert h[info["chosen"]] >= h["I"] and h[info["chosen"]] <= np.log2(15)
    assert code_entropy(x, rot) >= code_entropy(x, Rotation.identity(rot.size))


def test_gate_never_loses_to_block_only(site):
    x, w, _, rot, info = site
    block_only = layer_error(x, w, Rotation(rot.size, rot.right))
    assert layer_error(x, w, rot) <= block_only
    assert info["kept_u"] == (rot.left is not None)
    assert info["error_without_u"] == pytest.approx(block_only)
    assert layer_error(x, w, rot) < layer_error(x, w, Rotation.identity(rot.size))


def test_levels_can_be_switched_off():
    x, w = heavy_tailed(576, [5, 40, 41], t=64)
    gram = x.astype(np.float64).T @ x
    rot, info = torq_rotation(block_gram(gram), x, w, level1=False)
    assert rot.left is None and not info["kept_u"] and "error_with_u" not in info
    rot, info = torq_rotation(block_gram(gram), x, level2=False)
    np.testing.assert_array_equal(rot.right, np.eye(32))
    assert info["chosen"] == "I" and info["kept_u"]  # no weight: nothing to gate U with
    assert info["energy_spread_after"] == pytest.approx(1.0, abs=1e-9)
