"""Hadamard matrices (Sylvester, Paley I and II, Kronecker products) and the block Hadamard of the runtime's
exact order."""

import numpy as np
import pytest

from qpasses.numerics.hadamard import (
    block_hadamard_np,
    hadamard_factors,
    hadamard_matrix,
    paley_matrix,
    random_signs,
)


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


SIZES = [1, 2, 12, 20, 28, 32, 36, 64, 96, 128, 192, 576, 1536, 2048]


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_matrix_is_exactly_hadamard(n):
    h = hadamard_matrix(n)
    assert h.dtype == np.float64 and h.shape == (n, n)
    assert np.all(np.abs(h) == 1)
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))  # integer sums: exact in float64
    a, b = hadamard_factors(n)
    assert a * b == n and b & (b - 1) == 0


def test_order_8192_sampled_rows():
    h = hadamard_matrix(8192)
    rows = np.arange(0, 8192, 509)
    assert np.all(np.abs(h[rows]) == 1)
    gram = np.zeros((len(rows), 8192))
    gram[np.arange(len(rows)), rows] = 8192
    np.testing.assert_array_equal(h[rows] @ h.T, gram)
    i, j = np.ix_(rows, np.arange(8192))
    np.testing.assert_array_equal(h[rows], _sylvester_entries(i, j))


def _sylvester_entries(i, j):
    """Sylvester's natural order in closed form: H[i, j] = (-1)^popcount(i & j)."""
    return (-1.0) ** np.bitwise_count(i & j)


@pytest.mark.parametrize("n", [1, 2, 4, 32, 64, 256, 1024])
def test_powers_of_two_keep_the_sylvester_order(n):
    i, j = np.indices((n, n))
    np.testing.assert_array_equal(hadamard_matrix(n), _sylvester_entries(i, j))
    assert hadamard_factors(n) == (1, n)


@pytest.mark.parametrize(
    "q, order", [(3, 4), (11, 12), (19, 20), (27, 28), (5, 12), (13, 28), (17, 36), (9, 20), (25, 52), (49, 100)]
)
def test_paley_constructions(q, order):
    h = paley_matrix(q)  # Paley I for q ≡ 3 (mod 4), Paley II for q ≡ 1; 9, 25, 27, 49 are prime powers
    assert h.shape == (order, order) and np.all(np.abs(h) == 1)
    np.testing.assert_array_equal(h @ h.T, order * np.eye(order))
    if q % 4 == 3:  # Paley I: H - I is skew-symmetric
        np.testing.assert_array_equal(h - np.eye(order), -(h - np.eye(order)).T)


@pytest.mark.parametrize(
    "n, factors, q",
    [(12, (12, 1), 11), (20, (20, 1), 19), (28, (28, 1), 27), (36, (36, 1), 17), (24, (12, 2), 11),
     (52, (52, 1), 25), (96, (12, 8), 11), (192, (12, 16), 11), (576, (36, 16), 17), (1536, (12, 128), 11)],
)
def test_kronecker_factors(n, factors, q):
    assert hadamard_factors(n) == factors
    np.testing.assert_array_equal(hadamard_matrix(n), np.kron(paley_matrix(q), hadamard_matrix(factors[1])))


@pytest.mark.parametrize(
    "n, why", [(0, ">= 1"), (3, "multiples of 4"), (9, "multiples of 4"), (18, "block rotation of order 2"),
               (668, "not built by Sylvester, Paley"), (92, "nearest constructible orders 88 and 96")],
)
def test_impossible_orders_are_refused(n, why):
    with pytest.raises(ValueError, match=f"order {n}|got {n}") as err:
        hadamard_matrix(n)
    assert why in str(err.value)
    with pytest.raises(ValueError, match=str(n)):
        hadamard_factors(n)


@pytest.mark.parametrize("q", [1, 8, 15, 21])
def test_paley_needs_an_odd_prime_power(q):
    with pytest.raises(ValueError, match=f"got {q}"):
        paley_matrix(q)


def test_random_signs_are_seeded():
    s = random_signs(576, 3)
    assert s.dtype == np.float64 and set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s, random_signs(576, 3))
    assert not np.array_equal(s, random_signs(576, 4))
