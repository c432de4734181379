"""Kronecker rotations: orthogonal, the fast path equals the dense product, and folding preserves the linears."""

import numpy as np
import pytest

from qpasses.numerics.hadamard import block_hadamard_np, hadamard_matrix, random_signs
from qpasses.numerics.rotation import Rotation

H32 = hadamard_matrix(32) / np.sqrt(32)
ROTATIONS = {
    "full576-signs": lambda: Rotation.hadamard(576, seed=1),
    "full1536-signs": lambda: Rotation.hadamard(1536, seed=2),
    "full96": lambda: Rotation.hadamard(96),
    "block32-576-signs": lambda: Rotation.hadamard(576, 32, seed=3),
    "block12-96": lambda: Rotation.hadamard(96, 12),
    "torq-576": lambda: Rotation(576, random_signs(32, 4)[:, None] * H32, _random_orthogonal(18, 5)),
    "identity64": lambda: Rotation.identity(64),
}


def _random_orthogonal(n, seed):
    """A Haar-like orthogonal n×n matrix (QR of a Gaussian)."""
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]


@pytest.fixture(params=list(ROTATIONS), scope="module")
def rot(request):
    return ROTATIONS[request.param]()


def test_matrix_is_orthogonal(rot):
    m = rot.matrix()
    assert m.shape == (rot.size, rot.size)
    assert np.abs(m @ m.T - np.eye(rot.size)).max() <= 1e-12


def test_apply_equals_the_dense_product(rot):
    x = np.random.default_rng(0).standard_normal((2, 3, rot.size))
    ref = x @ rot.matrix()
    y64, y32 = rot.apply(x), rot.apply(x.astype(np.float32))
    assert y64.dtype == np.float64 and y32.dtype == np.float32 and y32.shape == x.shape
    assert np.abs(y64 - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(y32 - ref).max() <= 1e-5 * np.abs(ref).max()


def test_folds_preserve_the_linears(rot):
    rng = np.random.default_rng(1)
    x, w_in, w_out, bias = (rng.standard_normal(s) for s in ((4, rot.size), (7, rot.size), (rot.size, 5), rot.size))
    r = rot.matrix()
    # float64 identities: a reader takes W R, a writer takes Rᵀ W (and b R)
    np.testing.assert_allclose(rot.apply(x) @ rot.apply(w_in).T, x @ w_in.T, rtol=0, atol=1e-10)
    np.testing.assert_allclose((x[:, :5] @ w_out.T + bias) @ r, x[:, :5] @ (r.T @ w_out).T + bias @ r, atol=1e-10)
    # the fold methods compute in float64 and store float32
    for got, ref in [(rot.fold_into_inputs(w_in), w_in @ r), (rot.fold_into_outputs(w_out), r.T @ w_out),
                     (rot.fold_into_bias(bias), bias @ r)]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_is_block_hadamard():
    assert Rotation.hadamard(576, 32).is_block_hadamard == 32
    assert Rotation.hadamard(576, 32, seed=1).is_block_hadamard == 32
    assert Rotation.hadamard(64).is_block_hadamard == 64  # full width, a = 1
    assert Rotation.identity(64).is_block_hadamard == 1  # signs only
    assert Rotation.hadamard(576).is_block_hadamard == 0  # H36 ⊗ H16
    assert Rotation.hadamard(96, 12).is_block_hadamard == 0  # Paley block: no FWHT
    assert ROTATIONS["torq-576"]().is_block_hadamard == 0
    assert Rotation(576, H32, np.eye(18) * -1).is_block_hadamard == 0  # any left factor


def test_block_path_matches_the_kernel_order():
    rot = Rotation.hadamard(576, 64, seed=7)
    x = np.random.default_rng(2).standard_normal((5, 576)).astype(np.float32) * 3
    kernel = block_hadamard_np(x, 64, rot.signs)
    for y in (rot.apply(x), rot.apply(x.astype(np.float64))):
        assert np.abs(y - kernel).max() <= 1e-6 * np.abs(kernel).max()


def test_describe():
    assert Rotation.hadamard(576, seed=0).describe() == "signs·(H36 ⊗ H16)"
    assert Rotation.hadamard(576, 32).describe() == "I18 ⊗ H32"
    assert Rotation.hadamard(64, seed=0).describe() == "signs·H64"
    assert ROTATIONS["torq-576"]().describe() == "U18 ⊗ R32"
    assert Rotation.identity(96).describe() == "I96"


def test_shapes_are_validated():
    with pytest.raises(ValueError, match="does not divide size 100"):
        Rotation(100, H32)
    with pytest.raises(ValueError, match="left has shape"):
        Rotation(576, H32, np.eye(16))
    with pytest.raises(ValueError, match="signs has shape"):
        Rotation(576, H32, signs=np.ones(32))
    with pytest.raises(ValueError, match="does not divide size 96"):
        Rotation.hadamard(96, 64)
    with pytest.raises(ValueError, match="size 64 applied to features of size 32"):
        Rotation.identity(64).apply(np.zeros((1, 32)))
    assert not Rotation.hadamard(64).right.flags.writeable

