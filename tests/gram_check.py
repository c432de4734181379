"""The Gram tolerance of qpasses.calibration.stats, shared by the statistics tests."""

import torch


def assert_gram_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """The Gram tolerance of stats.py: float32 products summed in float64 are within
    1e-5 · √(G_ii G_jj) of the float64 Gram (Cauchy-Schwarz bounds every entry by that scale)."""
    d = want.diagonal().sqrt()
    assert ((got - want).abs() <= 1e-5 * d[:, None] * d[None, :]).all()
