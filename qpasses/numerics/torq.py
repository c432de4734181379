"""TORQ: a two-level orthogonal rotation R = U ⊗ R32 for MXFP4 activations (docs/methods.md#torq).

Level 1, inter-block: features split into n_b blocks of 32; the block-Gram
C[b, c] = Σ_p G[32b + p, 32c + p] of the feature Gram G holds the block energies on its diagonal,
and U ⊗ I_32 turns them into diag(Uᵀ C U). By Schur–Horn the constant vector tr(C)/n_b · 1 is
reachable; n_b - 1 Givens rotations each pin one more diagonal entry to it.
Level 2, intra-block: one R32 shared by all blocks, the candidate among I, H32 and diag(σ_k)·H32
maximizing the Shannon entropy H = -Σ_c p_c log2 p_c of the 15 signed E2M1 values of MXFP4(x R)
(at most log2 15 ≈ 3.91 bits); ties (|ΔH| < 0.01 bit) go to the lower layer error.
Gate: U is kept only if the layer error ||Q(xR)(WR)ᵀ - xWᵀ||² / ||xWᵀ||² (activations quantized,
weights float) is lower with U ⊗ R32 than with I ⊗ R32. U ⊗ I and I ⊗ R32 commute, and R32 leaves
block energies unchanged, so the equalization survives level 2.
"""

from __future__ import annotations

import numpy as np

from qpasses.formats.act import fake_quant_activation_np, quantize_activation_np
from qpasses.formats.spec import ActFormat
from qpasses.formats.weight import merge_blocks
from qpasses.numerics.hadamard import hadamard_matrix, random_signs
from qpasses.numerics.rotation import Rotation

BLOCK = 32
MXFP4 = ActFormat("mxfp4", BLOCK)
TIE_BITS = 0.01


def block_gram(gram: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Feature Gram [K, K] -> block-Gram [n_b, n_b], C[b, c] = Σ_p gram[block·b + p, block·c + p]."""
    g = np.asarray(gram, np.float64)
    k = g.shape[0]
    if g.shape != (k, k) or k % block:
        raise ValueError(f"block_gram needs a square Gram with a size divisible by {block}, got {g.shape}")
    return np.einsum("bpcp->bc", g.reshape(k // block, block, k // block, block))


def equalize_blocks(c: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Symmetric C [n, n] -> orthogonal U [n, n] with diag(Uᵀ C U) = trace(C)/n (within tol relative)."""
    c = np.array(c, np.float64)
    n = len(c)
    t = np.trace(c) / n
    u = np.eye(n)
    for _ in range(n):  # each step pins the largest diagonal entry to t: at most n - 1 steps
        d = np.diag(c)
        i, j = int(d.argmax()), int(d.argmin())
        if d[i] - t <= tol * abs(t) and t - d[j] <= tol * abs(t):
            break
        half = (d[i] - d[j]) / 2
        rho = np.hypot(half, c[i, j])
        if rho == 0:
            break
        # new C_ii = μ + ρ cos(2θ - φ), φ = atan2(C_ij, (C_ii - C_jj)/2): solve for C_ii = t
        theta = 0.5 * (np.arctan2(c[i, j], half) + np.arccos(np.clip((t - (d[i] + d[j]) / 2) / rho, -1.0, 1.0)))
        g = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        ij = [i, j]
        c[:, ij] = c[:, ij] @ g
        c[ij, :] = g.T @ c[ij, :]
        u[:, ij] = u[:, ij] @ g
    return u


def code_entropy(x: np.ndarray, rotation: Rotation) -> float:
    """Shannon entropy (bits) of the signed E2M1 values (±0 merged) of MXFP4(x @ R), x [..., K]."""
    y = rotation.apply(np.asarray(x, np.float32))
    grid, _ = quantize_activation_np(y, MXFP4)
    _, counts = np.unique(merge_blocks(grid, y.shape[-1]) + np.float32(0), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def intra_candidates(seed: int, count: int = 8) -> list[tuple[str, np.ndarray]]:
    """The R32 candidates: I, H32 and diag(σ_k)·H32 (σ_k = random_signs(32, seed + k)), normalized.

    The signs go before the Hadamard (diag(σ)·H32, docs/methods.md#torq): signs after it only flip
    output signs, to which MXFP4 is symmetric, so it would quantize like H32 (same magnitudes, same
    layer error; only the ± balance of the code histogram moves).
    """
    h = hadamard_matrix(BLOCK) / np.sqrt(BLOCK)
    signed = [(f"diag(σ{k})·H32", random_signs(BLOCK, seed + k)[:, None] * h) for k in range(count)]
    return [("I", np.eye(BLOCK)), ("H32", h), *signed]


def layer_error(x: np.ndarray, w: np.ndarray, rotation: Rotation, act: ActFormat = MXFP4) -> float:
    """Relative output error ||Q(xR)(WR)ᵀ - xWᵀ||² / ||xWᵀ||², x [T, K] float32, w [N, K]; weights float."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float64)
    ref = x.astype(np.float64) @ w.T
    y = fake_quant_activation_np(rotation.apply(x), act).astype(np.float64) @ rotation.apply(w).T
    return float(((y - ref) ** 2).sum() / (ref**2).sum())


def choose_intra(
    x: np.ndarray, left: np.ndarray | None, seed: int, candidates: int = 8, w: np.ndarray | None = None
) -> tuple[str, np.ndarray, list[tuple[str, float]]]:
    """Max-entropy R32 for Rotation(K, R32, left) on tokens x [T, K] -> (name, R32, [(name, entropy)])."""
    size = np.shape(x)[-1]
    rows = [(name, r32, code_entropy(x, Rotation(size, r32, left))) for name, r32 in intra_candidates(seed, candidates)]
    best = max(rows, key=lambda row: row[2])
    tied = [row for row in rows if best[2] - row[2] < TIE_BITS]
    if w is not None and len(tied) > 1:
        best = min(tied, key=lambda row: layer_error(x, w, Rotation(size, row[1], left)))
    return best[0], best[1], [(name, h) for name, _, h in rows]


def _spread(energies: np.ndarray) -> float:
    """max / min of the block energies (inf when a block is empty)."""
    lo = energies.min()
    return float(energies.max() / lo) if lo > 0 else float("inf")


def torq_rotation(
    c: np.ndarray,
    tokens: np.ndarray,
    w: np.ndarray | None = None,
    seed: int = 0,
    level1: bool = True,
    level2: bool = True,
) -> tuple[Rotation, dict]:
    """TORQ rotation U ⊗ R32 of one site from its block Gram c [K/32, K/32] (block_gram of the feature
    Gram, or collected directly: calibration StatsSpec.block_gram) and tokens [T, K] -> (Rotation, info).

    w [N, K], when given, breaks entropy ties and gates U (kept only if it lowers the layer error).
    info: chosen, entropy {name: bits}, kept_u, energy_spread_before / _after (max/min block energy),
    and with w: error_without_u (I ⊗ R32) and, with level 1, error_with_u (U ⊗ R32).
    """
    tokens = np.asarray(tokens, np.float32)
    size = tokens.shape[-1]
    c = np.asarray(c, np.float64)
    if len(c) * BLOCK != size:
        raise ValueError(f"Gram of size {len(c) * BLOCK} does not match tokens of size {size}")
    u = equalize_blocks(c) if level1 else None
    name, r32, table = choose_intra(tokens, u, seed, w=w) if level2 else ("I", np.eye(BLOCK), [])
    info = {"chosen": name, "entropy": dict(table)}
    if w is not None:
        info["error_without_u"] = layer_error(tokens, w, Rotation(size, r32))
        if u is not None:
            info["error_with_u"] = layer_error(tokens, w, Rotation(size, r32, u))
            u = u if info["error_with_u"] < info["error_without_u"] else None
    before = _spread(np.diag(c))
    info.update(
        kept_u=u is not None,
        energy_spread_before=before,
        energy_spread_after=before if u is None else _spread(np.diag(u.T @ c @ u)),
    )
    return Rotation(size, r32, u), info
