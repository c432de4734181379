"""QuantizedWeight (the codes and scales behind one weight matrix) and blocking along K."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpasses.formats.spec import WeightFormat


def block_length(fmt: WeightFormat, k: int) -> int:
    """Elements per block along K: fmt.block_size, or K itself for per-channel (block_size 0)."""
    return fmt.block_size or k


def split_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """[..., K] -> [..., ceil(K/block), block], the tail block zero-padded."""
    k = x.shape[-1]
    nb = -(-k // block)
    if nb * block != k:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], nb * block - k), x.dtype)], axis=-1)
    return x.reshape(*x.shape[:-1], nb, block)


def merge_blocks(blocks: np.ndarray, k: int) -> np.ndarray:
    """[..., nblocks, block] -> [..., K]: inverse of split_blocks (padding dropped)."""
    return blocks.reshape(*blocks.shape[:-2], -1)[..., :k]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight W[N, K] (torch convention, W[n, k]) quantized along K.

    codes: uint8 [N, nblocks, B], B = fmt.block_size (K when 0); padding past K holds the code of 0.
           INT: unsigned stored code (symmetric: q + 8 / q + 128; asymmetric: 0..2^bits-1).
           MXFP4: E2M1 code 0..15, bit 3 the sign.
    scales: INT: float32 [N, nblocks]; MXFP4: uint8 E8M0 codes [N, nblocks].
    zero_points: INT: uint8 [N, nblocks] (8 / 128 when symmetric); MXFP4: None.
    Compared by identity (it holds arrays).
    """

    fmt: WeightFormat
    shape: tuple[int, int]
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None

    def __post_init__(self):
        n, k = (int(d) for d in self.shape)
        object.__setattr__(self, "shape", (n, k))
        block = block_length(self.fmt, k)
        nb = -(-k // block)
        mx = self.fmt.kind == "mxfp4"
        expected = [
            ("codes", self.codes, np.uint8, (n, nb, block)),
            ("scales", self.scales, np.uint8 if mx else np.float32, (n, nb)),
        ]
        if not mx:
            expected.append(("zero_points", self.zero_points, np.uint8, (n, nb)))
        elif self.zero_points is not None:
            raise ValueError("mxfp4 weights have no zero points")
        for name, arr, dtype, shape in expected:
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != shape:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{self.fmt.kind} {name} must be {np.dtype(dtype)} {shape}, got {got}")

    @property
    def block(self) -> int:
        """Elements per block (B)."""
        return self.codes.shape[2]

    @property
    def nblocks(self) -> int:
        """Blocks per row."""
        return self.codes.shape[1]
