"""The torch activation fake-quant: bit-identical to the numpy oracle, and exportable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qpasses.formats import ActFormat, fake_quant_activation_np
from qpasses.formats.weight import merge_blocks, split_blocks
from qpasses.numerics.fake_quant import fake_quant_activation

F32 = np.float32
FORMATS = [ActFormat(kind, block) for kind in ("int8", "int4") for block in (0, 16, 32, 48, 64, 128)]
FORMATS.append(ActFormat("mxfp4", 32))
QMAX = {"int8": 127, "int4": 7}
MX_TIES = np.array([7.5, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 5.5, 0.5, 3.0, -0.25, -2.5, -5.0, -0.0], F32)


def hard_data(fmt, lead=(5, 3), k=200, seed=0):
    """Gaussian with outliers, then per-block exact ties, all-zero blocks, -0.0, tiny and power-of-two maxima."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, k)) * np.exp2(rng.integers(-10, 10, (*lead, 1)))).astype(F32)
    x[..., ::29] *= 300
    block = fmt.block_size or k
    xb = split_blocks(x, block).reshape(-1, -(-k // block), block)
    xb[0] = 0  # all-zero rows
    xb[1, ::2] = -0.0
    pow2 = np.exp2(rng.integers(-8, 8, xb.shape[1])).astype(F32)[:, None]
    if fmt.kind == "mxfp4":
        xb[2] = np.resize(MX_TIES, block) * pow2  # amax 7.5 * 2^j: element ties land exactly
        xb[4] = 8.0 * pow2  # amax an exact power of two (the log2 pitfall)
    else:
        qmax = QMAX[fmt.kind]
        ties = np.resize(np.arange(-qmax, qmax) + 0.5, block)
        ties[0] = qmax  # amax = qmax * 2^j, so x * (qmax / amax) = n + 0.5 exactly
        xb[2] = ties * pow2
    xb[3] *= F32(2.0**-120 if fmt.kind == "mxfp4" else 2.0**-100)  # tiny blocks (mxfp4: exponent clamp)
    return merge_blocks(xb.reshape(*lead, -1, block), k).copy()


def bits(a):
    return np.ascontiguousarray(a, F32).view(np.uint32)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_bit_identical_to_numpy_oracle(fmt):
    for k in (200, 96):
        x = hard_data(fmt, k=k)
        got = fake_quant_activation(torch.from_numpy(x), fmt)
        assert got.dtype == torch.float32 and got.shape == x.shape
        assert np.array_equal(bits(got.numpy()), bits(fake_quant_activation_np(x, fmt)))


def test_ties_really_are_ties():
    fmt = ActFormat("int4", 32)
    x = hard_data(fmt)
    y = fake_quant_activation_np(x, fmt)
    block = split_blocks(x, 32).reshape(-1, 7, 32)[2, 0]
    scaled = block * (F32(7) / np.abs(block).max())
    assert (scaled[1:] % 1 == 0.5).all()
    assert np.array_equal(split_blocks(y, 32).reshape(-1, 7, 32)[2, 0][1:] / (np.abs(block).max() / F32(7)),
                          np.rint(scaled[1:]))


def test_keeps_other_dtypes():
    x = torch.randn(4, 64, dtype=torch.float64)
    y = fake_quant_activation(x, ActFormat("int8", 32))
    assert y.dtype == torch.float64
    assert np.array_equal(y.float().numpy(), fake_quant_activation_np(x.float().numpy(), ActFormat("int8", 32)))


class FakeQuant(torch.nn.Module):
    def __init__(self, fmt):
        super().__init__()
        self.fmt = fmt

    def forward(self, x):
        return fake_quant_activation(x, self.fmt) * 2.0


@pytest.mark.parametrize("fmt", [ActFormat("int4", 48), ActFormat("int8", 0), ActFormat("mxfp4", 32)], ids=str)
def test_torch_export_with_dynamic_batch(fmt):
    example = torch.from_numpy(hard_data(fmt, lead=(3, 2), k=100))
    ep = torch.export.export(FakeQuant(fmt), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("frexp" in op or "log" in op for op in ops)
    x = hard_data(fmt, lead=(7, 2), k=100, seed=1)
    got = ep.module()(torch.from_numpy(x)).numpy()
    assert np.array_equal(bits(got), bits(fake_quant_activation_np(x, fmt) * F32(2)))
