"""The linear site: the one view of a linear layer that every pass is written against.

A site computes y = x · Wᵀ (+ b) with W[N, K] in torch convention, whatever the graph stage
stores (a torch parameter, an ONNX initializer in [K, N] or [N, K] behind a Transpose, a Gemm).
`name` is the module path ("model.layers.0.self_attn.q_proj") used by ignore patterns and
overrides; `weight_name` is the parameter name ("...q_proj.weight"), the key that survives
export and joins stage A to stage B. `role` is what the site is found to be by structure, whatever
its names ("lm_head": the linear that produces the logits), and patterns match it too: an
exporter that names the lm_head weight `val_451` cannot hide it from `ignore = ["lm_head"]`.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Iterable

import numpy as np

from qpasses.errors import InputError
from qpasses.formats.spec import ActFormat

ROTATION_PREFIX = "rotations."  # initializers of online rotations (ir.fx_ops.rotate): never linear sites
LOWRANK_PREFIX = "lowrank."  # constants L [K, r], R [r, N] of a linear's low-rank branch (FxStage.add_lowrank)


class TensorSite(ABC):
    """A named weight tensor that a pass may read and replace."""

    name: str
    weight_name: str
    role: str | None = None

    @abstractmethod
    def weight(self) -> np.ndarray:
        """W as float32 [N, K] (for an embedding table: [vocab, hidden])."""

    @abstractmethod
    def set_weight(self, w: np.ndarray) -> None:
        """Replace W (float32, same shape) wherever the graph uses it."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight().shape)

    def matches(self, patterns: Iterable[str]) -> bool:
        """True when the site's name, weight name or role matches a glob (`*.v_proj`, `lm_head`)."""
        names = (self.name, self.weight_name) if self.role is None else (self.name, self.weight_name, self.role)
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    def describe(self) -> str:
        n, k = self.shape
        return f"{self.name} [{n}x{k}]"


class LinearSite(TensorSite):
    """y = x · Wᵀ (+ b)."""

    @abstractmethod
    def bias(self) -> np.ndarray | None:
        """b as float32 [N], or None."""

    @abstractmethod
    def quantize_input(self, fmt: ActFormat) -> None:
        """Insert activation fake-quantization x ← Q(x) in front of this linear."""


def check_finite(name: str, w: np.ndarray) -> None:
    """Bad weights are an input error, never a silent NaN downstream."""
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise InputError(f"weight {name} holds {bad} NaN/Inf values; fix or re-export the model")


def select(sites: Iterable[TensorSite], ignore: Iterable[str] = ()) -> list[TensorSite]:
    ignore = tuple(ignore)
    return [s for s in sites if not s.matches(ignore)]
