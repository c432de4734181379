"""The block Hadamard of the runtime's exact order equals the matrix product with blockdiag(H_b / sqrt(b))."""

import numpy as np
import pytest

from qpasses.numerics.hadamard import block_hadamard_np, hadamard_matrix


@pytest.mark.parametrize("block", [1, 2, 32, 64])
def test_butterflies_equal_the_matrix_product(block):
    rng = np.random.default_rng(block)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    signs = rng.choice([-1.0, 1.0], 128).astype(np.float32)
    h = hadamard_matrix(block) / np.sqrt(block)
    expected = (x * signs).astype(np.float64) @ np.kron(np.eye(128 // block), h)
    np.testing.assert_allclose(block_hadamard_np(x, block, signs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h @ h.T, np.eye(block), atol=1e-12)  # orthogonal, so it can fold into weights


def test_bad_block_is_refused():
    with pytest.raises(ValueError, match="power of two dividing K=96"):
        block_hadamard_np(np.zeros((1, 96), np.float32), 64)
