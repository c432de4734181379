"""Kronecker-structured orthogonal rotations R = diag(s) · (L ⊗ B), applied without forming R.

size n = a·b, B (b×b) and L (a×a) orthogonal, s ∈ {±1}^n; feature index i = i_a·b + i_b (row-major).
With X the [a, b] reshape of a row x:  x (L ⊗ B) = vec(Lᵀ X B), about n·(a + b) MACs instead of n².
R is orthogonal, so a linear that reads the rotated space takes W R (torch W[N, n]: (xR)(WR)ᵀ = xWᵀ)
and one that writes into it takes Rᵀ W (W[n, K]) and b R (bias): x Wᵀ R = x (RᵀW)ᵀ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpasses.numerics.hadamard import hadamard_factors, hadamard_matrix, random_signs


def _normalized_hadamard(m: np.ndarray) -> bool:
    """Whether m equals hadamard_matrix(len(m)) / sqrt(len(m)) (to 1e-12)."""
    try:
        h = hadamard_matrix(len(m)) / np.sqrt(len(m))
    except ValueError:
        return False
    return np.allclose(m, h, rtol=0, atol=1e-12)


def _name(m: np.ndarray, letter: str) -> str:
    """"I{n}" for the identity, "H{n}" for the normalized Hadamard, else letter + n."""
    n = len(m)
    return f"I{n}" if np.array_equal(m, np.eye(n)) else f"H{n}" if _normalized_hadamard(m) else f"{letter}{n}"


def _frozen(m, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only float64 copy of m, checked to have the given shape."""
    m = np.array(m, np.float64)
    if m.shape != shape:
        raise ValueError(f"Rotation {name} has shape {m.shape}, expected {shape}")
    m.flags.writeable = False
    return m


@dataclass(frozen=True, eq=False)
class Rotation:
    """R = diag(signs) · (left ⊗ right) of order size; left None = identity, signs None = all +1.

    right: B, b×b float64 orthogonal; left: L, a×a with a = size // b; signs: (size,) ±1.
    Compared by identity (it holds arrays).
    """

    size: int
    right: np.ndarray
    left: np.ndarray | None = None
    signs: np.ndarray | None = None

    def __post_init__(self):
        right = np.asarray(self.right)
        b = right.shape[0] if right.ndim == 2 else 0
        if b == 0 or self.size % b:
            raise ValueError(f"Rotation right factor of shape {right.shape} does not divide size {self.size}")
        a = self.size // b
        object.__setattr__(self, "right", _frozen(right, "right", (b, b)))
        if self.left is not None:
            object.__setattr__(self, "left", _frozen(self.left, "left", (a, a)))
        if self.signs is not None:
            object.__setattr__(self, "signs", _frozen(self.signs, "signs", (self.size,)))

    @classmethod
    def hadamard(cls, size: int, block: int = 0, seed: int | None = None) -> Rotation:
        """Normalized Hadamard: full width H_a ⊗ H_b (block 0) or I ⊗ H_block; random signs from seed."""
        signs = None if seed is None else random_signs(size, seed)
        if block:
            if size % block:
                raise ValueError(f"Hadamard block {block} does not divide size {size}")
            return cls(size, hadamard_matrix(block) / np.sqrt(block), None, signs)
        a, b = hadamard_factors(size)
        left = None if a == 1 else hadamard_matrix(a) / np.sqrt(a)
        return cls(size, hadamard_matrix(b) / np.sqrt(b), left, signs)

    @classmethod
    def identity(cls, size: int) -> Rotation:
        """R = I_size."""
        return cls(size, np.ones((1, 1)))

    @property
    def block(self) -> int:
        """b, the order of the right factor."""
        return self.right.shape[0]

    @property
    def is_block_hadamard(self) -> int:
        """b when R = diag(signs) · (I ⊗ H_b / sqrt(b)), H_b Sylvester (a fused FWHT of block b; 1 = signs only),
        else 0."""
        b = self.block
        return b if self.left is None and not b & (b - 1) and _normalized_hadamard(self.right) else 0

    def matrix(self) -> np.ndarray:
        """The dense float64 R [size, size]."""
        left = np.eye(self.size // self.block) if self.left is None else self.left
        r = np.kron(left, self.right)
        return r if self.signs is None else self.signs[:, None] * r

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x @ R for x [..., size], float32 or float64 (kept): x (L ⊗ B) = vec(Lᵀ X B), X = x.reshape(a, b)."""
        x = np.asarray(x)
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        x = x.astype(dtype, copy=False)
        if x.shape[-1] != self.size:
            raise ValueError(f"Rotation of size {self.size} applied to features of size {x.shape[-1]}")
        if self.signs is not None:
            x = x * self.signs.astype(dtype)
        y = x.reshape(*x.shape[:-1], -1, self.block) @ self.right.astype(dtype)
        if self.left is not None:
            y = self.left.T.astype(dtype) @ y
        return y.reshape(x.shape)

    def fold_into_inputs(self, w: np.ndarray) -> np.ndarray:
        """W [N, size] of a linear reading the rotated space -> float32 W R, so (xR)(WR)ᵀ = xWᵀ."""
        return self.apply(np.asarray(w, np.float64)).astype(np.float32)

    def fold_into_outputs(self, w: np.ndarray) -> np.ndarray:
        """W [size, K] of a linear writing into the rotated space -> float32 Rᵀ W, so xWᵀR = x(RᵀW)ᵀ."""
        return self.apply(np.asarray(w, np.float64).T).T.astype(np.float32)

    def fold_into_bias(self, bias: np.ndarray) -> np.ndarray:
        """Bias [size] of a linear writing into the rotated space -> float32 b R."""
        return self.apply(np.asarray(bias, np.float64)).astype(np.float32)

    def describe(self) -> str:
        """Short text such as "signs·(H36 ⊗ H16)", "I18 ⊗ H32" or "U18 ⊗ R32"."""
        a, b = self.size // self.block, self.block
        left = f"I{a}" if self.left is None else _name(self.left, "U")
        right = _name(self.right, "R")
        if left[0] == right[0] == "I":
            text = f"I{self.size}"
        elif a == 1 or b == 1 and right[0] == "I":
            text = right if a == 1 else left
        else:
            text = f"{left} ⊗ {right}"
        if self.signs is None:
            return text
        return f"signs·({text})" if "⊗" in text else f"signs·{text}"
