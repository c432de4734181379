"""The rotation a rotate_* pass folds or inserts: its settings, and how it is chosen.

    kind = "hadamard"   R = diag(σ) · H, full width (Kronecker-factored when not a power of two)
                        or block-diagonal I ⊗ H_block; σ random signs from `seed`
    kind = "torq"       R = U ⊗ R32 from calibration statistics of the rotated inputs
                        (numerics.torq: level 1 equalizes block energies, gated by layer error;
                        level 2 picks the max-entropy intra-block rotation)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpasses.calibration.stats import StatsSpec
from qpasses.numerics.rotation import Rotation

KINDS = ("hadamard", "torq")
GATE_TOKENS, GATE_ROWS = 4096, 1024  # TORQ: tokens for the entropy and the layer errors, weight rows for the errors


@dataclass(frozen=True)
class Settings:
    kind: str = "hadamard"  # hadamard | torq
    block: int = 0  # hadamard: 0 = full width, else block-diagonal I ⊗ H_block
    signs: bool = True  # hadamard: random sign diagonal diag(σ) in front
    seed: int = 0  # σ (hadamard) and the TORQ candidates' signs
    level1: bool = True  # torq: inter-block variance equalization U (kept only where it lowers the error)
    level2: bool = True  # torq: maximum-entropy intra-block rotation R32
    tokens: int = 2048  # torq: calibration tokens kept per site for the entropy and the gate

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.block < 0 or self.tokens < 64:
            raise ValueError("block must be >= 0 (0 = full width) and tokens >= 64")

    @property
    def needs_stats(self) -> bool:
        return self.kind == "torq"

    def stats_spec(self) -> StatsSpec:
        return StatsSpec(moments=False, absmax=False, block_gram=32, keep_tokens=self.tokens, seed=self.seed)


def choose(settings: Settings, size: int, block_gram=None, tokens=None, w=None) -> tuple[Rotation, dict]:
    """The rotation of width `size`; TORQ needs the block Gram [size/32, size/32] and kept tokens
    [T, size] of the inputs, and uses the weight rows w [N, size] for its gate."""
    if settings.kind == "hadamard":
        rot = Rotation.hadamard(size, settings.block, settings.seed if settings.signs else None)
        return rot, {"rotation": rot.describe(), "seed": settings.seed if settings.signs else None}
    from qpasses.numerics.torq import torq_rotation

    rot, info = torq_rotation(np.asarray(block_gram, np.float64), np.asarray(tokens, np.float32),
                              None if w is None else np.asarray(w, np.float32), seed=settings.seed,
                              level1=settings.level1, level2=settings.level2)
    return rot, {"rotation": rot.describe(), **info}


def sample_rows(w: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows of w, chosen at random without replacement (the gate's weights)."""
    if w.shape[0] <= n:
        return w
    return w[np.sort(np.random.default_rng(seed).choice(w.shape[0], n, replace=False))]
