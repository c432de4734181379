"""Hadamard matrices (entries +-1, H Hᵀ = n I) and the block Hadamard in the runtime kernel's float32 order.

Constructions, all in float64:
- Sylvester: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]] (symmetric), every power of two.
- Paley I, q ≡ 3 (mod 4) a prime power: order q + 1, H = I + [[0, 1ᵀ], [-1, Q]].
- Paley II, q ≡ 1 (mod 4) a prime power: order 2(q + 1), C = [[0, 1ᵀ], [1, Q]] with each 0 (the
  diagonal) replaced by [[1, 1], [1, -1]] and each ±1 by ±[[1, -1], [-1, -1]].
  Q[i, j] = χ(x_j - x_i) is the Jacobsthal matrix of GF(q), χ the quadratic character.
- Kronecker products: H_a ⊗ H_b is Hadamard of order a·b (row-major index i = i_a·b + i_b); order
  n is built as (Paley order a) ⊗ H_b with b the largest power of two that leaves a constructible a.
A Hadamard order is 1, 2 or a multiple of 4; some multiples of 4 (e.g. 668) are not reached here.

block_hadamard_np: x' = (x * signs) . blockdiag(H_b / sqrt(b)), computed as butterflies of stride
1, 2, 4, ... (a, b) -> (a + b, a - b), then one multiply by float32(1 / sqrt(b)); every step is one
correctly rounded float32 operation, so the C++ kernel (runtime/src/activations.cc) gives the same bits.
"""

from __future__ import annotations

import itertools
from math import isqrt

import numpy as np

F32 = np.float32


def block_hadamard_np(x: np.ndarray, block: int, signs: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., K] -> float32 [..., K]; block 0 or 1 applies only the signs (if any)."""
    x = np.array(x, F32)
    k = x.shape[-1]
    if signs is not None:
        x = x * np.asarray(signs, F32)
    if block <= 1:
        return x
    if block & (block - 1) or k % block:
        raise ValueError(f"Hadamard block {block} must be a power of two dividing K={k}")
    v = x.reshape(-1, k // block, block)
    h = 1
    while h < block:
        pairs = v.reshape(*v.shape[:2], block // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        v = np.stack([a + b, a - b], axis=-2).reshape(v.shape)
        h *= 2
    return (v * F32(1.0 / np.sqrt(np.float64(block)))).reshape(x.shape)


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, m) with q = p^m and p prime, or None."""
    if q < 2:
        return None
    p = next((d for d in range(2, isqrt(q) + 1) if q % d == 0), q)
    m = 0
    while q % p == 0:
        q, m = q // p, m + 1
    return (p, m) if q == 1 else None


def _paley_q(a: int) -> int | None:
    """The prime power q whose Paley construction has order a (Paley I preferred), or None."""
    if a % 4:
        return None
    if _prime_power(a - 1):
        return a - 1
    q = a // 2 - 1
    return q if q % 4 == 1 and _prime_power(q) else None


def _split(n: int) -> tuple[int, int] | None:
    """(a, b), n = a·b, b the largest power of two leaving a = 1 or a Paley order; None when none does."""
    b = n & -n
    while b:
        a = n // b
        if a == 1 or _paley_q(a):
            return a, b
        b //= 2
    return None


def hadamard_factors(n: int) -> tuple[int, int]:
    """n -> (a, b), n = a·b, b the largest power of two such that order a is built (a = 1 or Paley)."""
    if n < 1:
        raise ValueError(f"Hadamard order must be >= 1, got {n}")
    found = _split(n)
    if found is None:
        why = (f"no Hadamard matrix of order {n} exists: orders are 1, 2 or multiples of 4" if n % 4
               else f"order {n} is not built by Sylvester, Paley or their Kronecker products")
        lo = next(k for k in range(n - 1, 0, -1) if _split(k))
        hi = next(k for k in itertools.count(n + 1) if _split(k))
        block = max(d for d in range(1, n) if n % d == 0 and _split(d))
        hint = f", or a block rotation of order {block} (divides {n})" if block > 1 else ""
        raise ValueError(f"{why}; nearest constructible orders {lo} and {hi}{hint}")
    return found


def _jacobsthal(p: int, m: int) -> np.ndarray:
    """Q[i, j] = χ(x_j - x_i) over GF(p^m): χ(0) = 0, +1 on nonzero squares, -1 otherwise; int64 [q, q].

    Element e is the polynomial whose coefficients are the base-p digits of e; products are taken
    modulo the first monic f of degree m for which exactly (q + 1) / 2 elements are squares, which
    holds in a field and fails when f is reducible (GF(p)[x]/f then has zero divisors, fewer squares).
    """
    q, weights = p**m, p ** np.arange(m)
    digits = np.arange(q)[:, None] // weights % p  # [q, m]: coefficient of x^k
    for tail in itertools.product(range(p), repeat=m):
        times_x = np.eye(m, k=-1, dtype=np.int64)
        times_x[:, -1] = -np.array(tail) % p  # x · x^(m-1) = -(tail · (1, x, ..., x^(m-1)))
        powers = [np.eye(m, dtype=np.int64)]
        for _ in range(m - 1):
            powers.append(powers[-1] @ times_x % p)
        squares = (np.einsum("ek,kij,ej->ei", digits, np.array(powers), digits) % p) @ weights
        if len(np.unique(squares)) == (q + 1) // 2:
            break
    chi = np.full(q, -1, np.int64)
    chi[squares] = 1
    chi[0] = 0
    return chi[((digits[None] - digits[:, None]) % p) @ weights]


def paley_matrix(q: int) -> np.ndarray:
    """The float64 Paley Hadamard matrix of prime power q: order q + 1 (q ≡ 3 mod 4) or 2(q + 1) (q ≡ 1 mod 4)."""
    pm = _prime_power(q)
    if pm is None or q % 2 == 0:
        raise ValueError(f"Paley construction needs an odd prime power q, got {q}")
    c = np.zeros((q + 1, q + 1))
    c[1:, 1:] = _jacobsthal(*pm)
    c[0, 1:] = 1
    if q % 4 == 3:  # Paley I: S = [[0, 1ᵀ], [-1, Q]] is skew, H = I + S
        c[1:, 0] = -1
        return c + np.eye(q + 1)
    c[1:, 0] = 1  # Paley II: C symmetric
    return np.kron(c, [[1.0, -1.0], [-1.0, -1.0]]) + np.kron(np.eye(q + 1), [[1.0, 1.0], [1.0, -1.0]])


def hadamard_matrix(n: int) -> np.ndarray:
    """The float64 Hadamard matrix of order n (entries +-1): Sylvester H_n for powers of two, else H_a ⊗ H_b."""
    a, b = hadamard_factors(n)
    h = np.ones((1, 1), np.int8)  # built in int8: a large float64 recursion is dominated by allocation
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h.astype(np.float64) if a == 1 else np.kron(paley_matrix(_paley_q(a)), h)


def random_signs(n: int, seed: int) -> np.ndarray:
    """float64 [n] of +-1 drawn from np.random.default_rng(seed)."""
    return np.random.default_rng(seed).choice([-1.0, 1.0], n)
