"""Streaming per-channel statistics of one linear's input x[T, K] (docs/methods.md#calibration-statistics).

Every statistic is mergeable and bounded by the spec, never by the number of tokens seen:

  moments    count, Σx, Σx² per channel in float64           -> mean, var (population, ddof 0)
  absmax     max_t |x_tj|                                     -> absmax
  quantiles  the top k of |x_:,j| per channel, k sized for    -> quantile(q), exact: the value at
             spec.max_tokens tokens                              rank (T-1)q of the sorted column,
                                                                 interpolated like torch.quantile
  gram       Σ_t x_tᵀ x_t, K x K float64: products in the       -> gram
             activations' precision over GRAM_BLOCK tokens, summed in float64 (float32 activations:
             |error_ij| ≤ 1e-5 · √(G_ii G_jj) in practice, tested; half the time of float64 products);
             only the blocks of GRAM_COLUMNS columns on and above the diagonal are accumulated,
             the rest is their transpose (K = 8192: 36 of 64 blocks)
  block_gram Σ_t Σ_p x_t[bi+p] x_t[bj+p] for blocks of b,      -> block_gram (TORQ's block energies:
             K/b x K/b float64                                    b² times less memory, b times less work)
  tokens     a uniform subsample of at most keep_tokens rows  -> tokens, token_index

Memory per site: 16K (moments) + 4K (absmax) + 4kK (quantiles) + 8K² (gram) + 8(K/b)² (block_gram)
+ (4K + 16) keep_tokens (tokens) bytes, plus one batch while updating.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StatsSpec:
    """What to collect. `max_tokens` is the total number of tokens the statistic will see; it
    sizes the quantile buffer, and feeding more tokens than that is an error when quantiles are
    requested. `seed` drives the token reservoir."""

    moments: bool = True
    absmax: bool = True
    quantiles: tuple[float, ...] = ()
    max_tokens: int = 65536
    gram: bool = False
    block_gram: int = 0  # block size b, 0 = off
    keep_tokens: int = 0
    seed: int = 0

    def __post_init__(self):
        qs = tuple(sorted({float(q) for q in self.quantiles}))
        if any(not 0.0 < q < 1.0 for q in qs):
            raise ValueError(f"quantiles must lie in (0, 1), got {self.quantiles}; use absmax for q = 1")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.block_gram < 0:
            raise ValueError(f"block_gram is a block size (0 = off), got {self.block_gram}")
        if self.keep_tokens < 0:
            raise ValueError(f"keep_tokens must be >= 0, got {self.keep_tokens}")
        object.__setattr__(self, "quantiles", qs)

    @property
    def quantile_rows(self) -> int:
        """k, the rows of the top-k buffer: enough for every requested q at max_tokens tokens."""
        if not self.quantiles:
            return 0
        t, q = self.max_tokens, self.quantiles[0]
        k = max(math.floor((1.0 - q) * (t - 1)) + 2, *(_rows_needed(q, t, d) for d in (torch.float32, torch.float64)))
        return min(k, t)

    def check_tokens(self, total: int) -> None:
        """Raise before collecting when `total` tokens would overflow the quantile buffer."""
        if self.quantiles and total > self.max_tokens:
            raise ValueError(
                f"{total} calibration tokens exceed StatsSpec.max_tokens={self.max_tokens}, which sizes "
                f"the exact quantile buffer; raise max_tokens to at least {total}"
            )


def _rank(q: float, count: int, dtype: torch.dtype) -> torch.Tensor:
    """The fractional ascending rank (T-1)q, computed in the sample dtype as torch.quantile does."""
    return torch.tensor(q, dtype=dtype) * (count - 1)


def _rows_needed(q: float, count: int, dtype: torch.dtype) -> int:
    """Top rows needed to read rank floor((T-1)q) of an ascending column of T values."""
    return count - int(_rank(q, count, dtype).long())


GRAM_BLOCK = 2048  # tokens per product of the Gram matrix
GRAM_COLUMNS = 1024  # columns per block row of the Gram matrix

_FIELDS = ("_sum", "_sumsq", "_absmax", "_top", "_gram", "_bgram", "_rows", "_keys", "_index")  # the tensors held


class SiteStats:
    """Statistics of x[..., K] accumulated over calls to `update`; K is fixed by the first call."""

    def __init__(self, spec: StatsSpec):
        self.spec = spec
        self.count = 0
        self.width: int | None = None
        self.dtype = torch.float32  # of absmax, the quantile buffer and kept tokens
        self._sum = self._sumsq = self._absmax = self._top = self._gram = self._bgram = None
        self._rows = self._keys = self._index = None
        self._gen = torch.Generator().manual_seed(spec.seed)

    def _init(self, k: int, dtype: torch.dtype) -> None:
        self.width, self.dtype = k, dtype
        f64 = torch.float64
        if self.spec.moments:
            self._sum, self._sumsq = torch.zeros(k, dtype=f64), torch.zeros(k, dtype=f64)
        if self.spec.absmax:
            self._absmax = torch.zeros(k, dtype=dtype)
        if self.spec.quantiles:
            self._top = torch.empty(0, k, dtype=dtype)
        if self.spec.gram:
            self._gram = torch.zeros(k, k, dtype=f64)
        if self.spec.block_gram:
            if k % self.spec.block_gram:
                raise ValueError(f"block_gram {self.spec.block_gram} does not divide the width {k}")
            self._bgram = torch.zeros(k // self.spec.block_gram, k // self.spec.block_gram, dtype=f64)
        if self.spec.keep_tokens:
            self._rows = torch.empty(0, k, dtype=dtype)
            self._keys, self._index = torch.empty(0, dtype=f64), torch.empty(0, dtype=torch.long)

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of x[..., K] (any leading shape; flattened to [T, K])."""
        if not x.is_floating_point():
            raise TypeError(f"activations must be floating point, got {x.dtype}")
        x = x.detach().reshape(-1, x.shape[-1])
        if self.width is None:
            self._init(x.shape[1], torch.promote_types(x.dtype, torch.float32))
        elif x.shape[1] != self.width:
            raise ValueError(f"expected rows of width {self.width}, got {x.shape[1]}")
        t = x.shape[0]
        if t == 0:
            return
        self.spec.check_tokens(self.count + t)
        if self.spec.moments or self.spec.block_gram:
            x64 = x.double()
        if self.spec.moments:
            self._sum += x64.sum(0)
            self._sumsq += (x64 * x64).sum(0)
        if self.spec.gram:
            xp = x.to(torch.promote_types(x.dtype, torch.float32))
            for a in range(0, t, GRAM_BLOCK):
                block = xp[a:a + GRAM_BLOCK]
                for c in range(0, self.width, GRAM_COLUMNS):  # block row c, from the diagonal block on
                    self._gram[c:c + GRAM_COLUMNS, c:] += (block[:, c:c + GRAM_COLUMNS].T @ block[:, c:]).double()
        if self.spec.block_gram:
            blocks = x64.reshape(t, -1, self.spec.block_gram)
            self._bgram += torch.einsum("tip,tjp->ij", blocks, blocks)
        if self.spec.absmax or self.spec.quantiles:
            a = x.abs().to(self.dtype)
            if self.spec.absmax:
                self._absmax = torch.maximum(self._absmax, a.amax(0))
            if self.spec.quantiles:
                self._top = _top_rows(self._top, a, self.spec.quantile_rows)
        if self.spec.keep_tokens:
            keys = torch.rand(t, generator=self._gen, dtype=torch.float64)
            index = torch.arange(self.count, self.count + t)
            self._keep(x.to(self.dtype), keys, index)
        self.count += t

    def _keep(self, rows: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> None:
        """Reservoir by random keys: the rows with the keep_tokens smallest keys seen so far."""
        if self._keys.numel() >= self.spec.keep_tokens:  # full: only keys below the largest kept can enter
            enter = keys < self._keys.max()
            rows, keys, index = rows[enter], keys[enter], index[enter]
        rows, keys = torch.cat([self._rows, rows]), torch.cat([self._keys, keys])
        index = torch.cat([self._index, index])
        sel = keys.topk(min(self.spec.keep_tokens, keys.numel()), largest=False).indices
        sel = sel[index[sel].argsort()]
        self._rows, self._keys, self._index = rows[sel], keys[sel], index[sel]

    def merge(self, other: SiteStats) -> SiteStats:
        """Fold `other` (same spec) into self, as if its rows had followed ours; returns self.

        Exact for every statistic. The token reservoir keeps the smallest keys of both; two
        instances with the same seed drew the same key stream, so shards meant to be merged
        should use specs that differ in `seed` only (the only field allowed to differ)."""
        if dataclasses.replace(other.spec, seed=self.spec.seed) != self.spec:
            raise ValueError("cannot merge statistics collected with different specs")
        if other.width is None:
            return self
        if self.width is None:
            self._init(other.width, other.dtype)
        elif (other.width, other.dtype) != (self.width, self.dtype):
            raise ValueError(f"cannot merge [{self.width}] {self.dtype} with [{other.width}] {other.dtype} statistics")
        self.spec.check_tokens(self.count + other.count)
        if self.spec.moments:
            self._sum += other._sum
            self._sumsq += other._sumsq
        if self.spec.absmax:
            self._absmax = torch.maximum(self._absmax, other._absmax)
        if self.spec.quantiles:
            self._top = _top_rows(self._top, other._top, self.spec.quantile_rows)
        if self.spec.gram:
            self._gram += other._gram
        if self.spec.block_gram:
            self._bgram += other._bgram
        if self.spec.keep_tokens:
            self._keep(other._rows, other._keys, other._index + self.count)
        self.count += other.count
        return self

    def _need(self, field: str, enabled: bool) -> None:
        if not enabled:
            raise ValueError(f"{field} was not collected: enable it in StatsSpec")
        if self.count == 0:
            raise ValueError(f"{field} is undefined: no tokens were seen")

    @property
    def mean(self) -> torch.Tensor:
        """[K] float64."""
        self._need("mean", self.spec.moments)
        return self._sum / self.count

    @property
    def var(self) -> torch.Tensor:
        """[K] float64 population variance E[x²] - E[x]² (divides by T, not T - 1)."""
        self._need("var", self.spec.moments)
        m = self._sum / self.count
        return (self._sumsq / self.count - m * m).clamp_min(0.0)

    @property
    def absmax(self) -> torch.Tensor:
        """[K] max |x| per channel, in the activation dtype."""
        self._need("absmax", self.spec.absmax)
        return self._absmax

    def quantile(self, q: float) -> torch.Tensor:
        """[K] the q-quantile of |x| per channel; equals torch.quantile(|X|, q, dim=0) on all rows."""
        self._need("quantile", bool(self.spec.quantiles))
        rank = _rank(q, self.count, self.dtype)
        lo, hi = int(rank.long()), int(rank.ceil().long())
        if self.count - lo > self._top.shape[0]:
            raise ValueError(f"quantile {q} needs the top {self.count - lo} values but the buffer holds "
                             f"{self._top.shape[0]}; request it in StatsSpec.quantiles")
        top = self._top
        return torch.lerp(top[self.count - 1 - lo], top[self.count - 1 - hi], rank - lo)

    @property
    def gram(self) -> torch.Tensor:
        """[K, K] float64 Σ_t x_tᵀ x_t (not divided by T)."""
        self._need("gram", self.spec.gram)
        for c in range(GRAM_COLUMNS, self.width, GRAM_COLUMNS):  # the blocks below the diagonal, in place
            self._gram[c:c + GRAM_COLUMNS, :c] = self._gram[:c, c:c + GRAM_COLUMNS].T
        return self._gram

    @property
    def block_gram(self) -> torch.Tensor:
        """[K/b, K/b] float64 Σ_t Σ_p x_t[b·i + p] x_t[b·j + p] (not divided by T)."""
        self._need("block_gram", bool(self.spec.block_gram))
        return self._bgram

    @property
    def tokens(self) -> torch.Tensor:
        """[min(T, keep_tokens), K] uniformly subsampled rows, in stream order."""
        self._need("tokens", bool(self.spec.keep_tokens))
        return self._rows

    @property
    def token_index(self) -> torch.Tensor:
        """[min(T, keep_tokens)] int64 stream positions of `tokens` (equal across sites fed the
        same row counts with the same seed)."""
        self._need("tokens", bool(self.spec.keep_tokens))
        return self._index

    def nbytes(self) -> int:
        """Bytes held by the statistics (the memory bound of the module docstring)."""
        held = (getattr(self, n) for n in _FIELDS)
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def state(self) -> dict:
        """Plain tensors and ints, loadable with torch.load(weights_only=True)."""
        out = {n: getattr(self, n) for n in _FIELDS if getattr(self, n) is not None}
        return {**out, "count": self.count, "width": self.width, "dtype": str(self.dtype).removeprefix("torch."),
                "generator": self._gen.get_state()}

    @classmethod
    def from_state(cls, spec: StatsSpec, state: dict) -> SiteStats:
        s = cls(spec)
        s.count, s.width, s.dtype = state["count"], state["width"], getattr(torch, state["dtype"])
        s._gen.set_state(state["generator"])
        for n in _FIELDS:
            setattr(s, n, state.get(n))
        return s


def _top_rows(held: torch.Tensor, new: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values per column of held ∪ new, sorted descending: [min(k, rows), K]."""
    both = torch.cat([held, new])
    return both.topk(min(k, both.shape[0]), dim=0).values
