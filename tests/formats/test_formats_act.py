"""The numpy activation fake-quant oracle against per-block loops written from the rules."""

from __future__ import annotations

import numpy as np
import pytest

from qpasses.formats import ActFormat, e2m1_decode, e2m1_encode, fake_quant_activation_np

F32 = np.float32


def loop_reference(x, fmt):
    """Block by block, straight from the rule text (float32 scalars throughout)."""
    k = x.shape[-1]
    block = fmt.block_size or k
    out = np.empty_like(x)
    for row in np.ndindex(x.shape[:-1]):
        for start in range(0, k, block):
            v = x[row][start:start + block]
            amax = np.abs(v).max()
            if fmt.kind == "mxfp4":
                f = np.frexp(amax)[1] - 1 if amax > 0 else -127
                scale = F32(2.0 ** max(f - 2, -127))
                y = e2m1_decode(e2m1_encode(v / scale)) * scale
            elif amax == 0:
                y = np.zeros_like(v)
            else:
                qmax = F32({"int8": 127, "int4": 7}[fmt.kind])
                y = np.clip(np.rint(v * (qmax / amax)), -qmax - 1, qmax) * (amax / qmax)
            out[row][start:start + block] = y
    return out


@pytest.mark.parametrize("fmt", [ActFormat("int8", 32), ActFormat("int8", 0), ActFormat("int4", 0),
                                 ActFormat("int4", 48), ActFormat("int8", 7), ActFormat("mxfp4", 32)], ids=str)
def test_matches_block_loop(fmt):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 2, 100)) * np.exp2(rng.integers(-6, 6, (3, 2, 1)))).astype(F32)
    x[0, 0, 40:80] = 0
    x[1, 1, ::13] *= 40
    got = fake_quant_activation_np(x, fmt)
    assert got.dtype == F32 and got.shape == x.shape
    assert np.array_equal(got, loop_reference(x, fmt))


@pytest.mark.parametrize("kind, qmax", [("int8", 127), ("int4", 7)])
def test_int_ties_go_to_even(kind, qmax):
    ties = np.arange(-qmax, qmax, dtype=F32) + F32(0.5)  # x * (qmax / amax) lands exactly on n + 0.5
    x = np.concatenate([[qmax], ties]).astype(F32) * F32(0.25)
    got = fake_quant_activation_np(x[None], ActFormat(kind, 0))[0] / F32(0.25)
    assert np.array_equal(got[1:], np.rint(ties)) and got[0] == qmax
    if kind == "int4":
        assert got[1:].tolist() == [-6, -6, -4, -4, -2, -2, 0, 0, 2, 2, 4, 4, 6, 6]


def test_mxfp4_tie_vector_and_zero_block():
    x = np.zeros((1, 64), F32)
    x[0, :11] = [0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 5.01, 7, 4.0]  # amax 7: X = 1
    got = fake_quant_activation_np(x, ActFormat("mxfp4", 32))
    assert got[0, :11].tolist() == [0, 0.5, 1, 1, 2, 2, 4, 4, 6, 6, 4]
    assert not got[0, 32:].any()


def test_int_zero_rows_and_short_tail():
    x = np.zeros((2, 70), F32)
    x[1, 64:] = [1, -2, 3, -4, 5, -6]
    got = fake_quant_activation_np(x, ActFormat("int4", 32))
    assert not got[0].any() and not got[1, :64].any()
    s = F32(6) / F32(7)
    assert np.array_equal(got[1, 64:], np.clip(np.rint(x[1, 64:] * (F32(7) / F32(6))), -8, 7) * s)
