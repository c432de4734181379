"""Block Hadamard rotation in numpy, in the exact float32 order of the runtime's kernel.

x' = (x * signs) . blockdiag(H_b / sqrt(b)), H_b the Sylvester Hadamard matrix (H_1 = [1],
H_2n = [[H_n, H_n], [H_n, -H_n]]), which is symmetric and, scaled by 1/sqrt(b), orthogonal.
Computed as butterflies of stride 1, 2, 4, ... (a, b) -> (a + b, a - b), then one multiply by
float32(1 / sqrt(b)); every step is one correctly rounded float32 operation, so the C++ kernel
(runtime/src/activations.cc) gives the same bits.
"""

from __future__ import annotations

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


def hadamard_matrix(block: int) -> np.ndarray:
    """The float64 Sylvester Hadamard matrix H_b (entries +-1), b a power of two."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"Hadamard size {block} must be a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return h
