"""MXFP4: E2M1 / E8M0 codes, rounding ties, scale rules, weight quantization (docs/methods.md#mxfp4)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from qpasses.formats import (
    WeightFormat,
    block_exponent,
    dequantize_weight,
    e2m1_decode,
    e2m1_encode,
    e2m1_round,
    e8m0_decode,
    e8m0_encode,
    quantize_weight,
)

F32 = np.float32
FLOOR, EVEN = WeightFormat("mxfp4", 32), WeightFormat("mxfp4", 32, scale_rule="even")


def table_round(a):
    """The magnitude decision table of docs/methods.md#mxfp4, written out."""
    return np.select([a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5],
                     [0, 0.5, 1, 1.5, 2, 3, 4], 6).astype(F32)


def frexp_reference(x, rule="floor"):
    """MXFP4 of docs/methods.md#mxfp4 from the frexp exponent, in numpy; "even" bumps e at >= 1.75 * 2^f."""
    xb = x.reshape(-1, 32)
    amax = np.abs(xb).max(-1, keepdims=True)
    mant, e = np.frexp(np.where(amax > 0, amax, F32(1)))
    e = e - 1 + ((rule == "even") & (mant >= 0.875))
    scale = np.ldexp(F32(1), np.clip(e - 2, -127, 127)).astype(F32)
    scale = np.where(amax > 0, scale, np.ldexp(F32(1), -127).astype(F32))
    return (np.sign(xb) * table_round(np.abs(xb / scale)) * scale).reshape(x.shape)


def test_all_e2m1_codes_round_trip_and_match_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    values = e2m1_decode(codes)
    expected = codes.view(ml_dtypes.float4_e2m1fn).astype(F32)
    assert np.array_equal(values.view(np.uint32), expected.view(np.uint32))  # incl. -0.0 for code 8
    assert np.array_equal(e2m1_encode(values), codes)


def test_e2m1_encode_agrees_with_ml_dtypes_cast():
    rng = np.random.default_rng(0)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0], F32)
    x = np.concatenate([rng.uniform(-9, 9, 20000).astype(F32), ties, -ties, [0.0, -0.0, 1e30, -1e30]]).astype(F32)
    assert np.array_equal(e2m1_encode(x), x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8))


def test_e2m1_tie_table_and_vectors():
    x = np.array([0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 5.01, 7, 100], F32)
    expected = np.array([0, 0.5, 1, 1, 2, 2, 4, 4, 6, 6, 6], F32)
    assert np.array_equal(e2m1_decode(e2m1_encode(x)), expected)
    assert np.array_equal(e2m1_decode(e2m1_encode(-x)), -expected)
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(0, 8, 100000), np.arange(0, 8.25, 0.25)]).astype(F32)
    assert np.array_equal(e2m1_round(a), table_round(a))


def test_e2m1_encode_rejects_nan():
    with pytest.raises(ValueError):
        e2m1_encode(np.array([np.nan], F32))


def test_all_e8m0_codes():
    codes = np.arange(256, dtype=np.uint8)
    got = e8m0_decode(codes)
    expected = codes.view(ml_dtypes.float8_e8m0fnu).astype(F32)
    assert np.isnan(got[255]) and np.isnan(expected[255])
    assert np.array_equal(got[:255], expected[:255])
    assert np.array_equal(got[:255], np.ldexp(1.0, np.arange(-127, 128)).astype(F32))
    assert got.dtype == F32
    assert np.array_equal(e8m0_encode(np.arange(-127, 128)), codes[:255])
    with pytest.raises(ValueError):
        e8m0_encode(np.array([128]))
    with pytest.raises(ValueError):
        e8m0_decode(np.array([256]))


def test_block_exponent_is_exact_at_powers_of_two_and_subnormals():
    amax = np.array([8.0, np.nextafter(F32(8), F32(0)), 1.0, 1.75, 1.7499999, 2.0**-126, 2.0**-130, 0.0, 3e38], F32)
    assert block_exponent(amax).tolist() == [1, 0, -2, -2, -2, -127, -127, -127, 125]
    assert block_exponent(amax, "even").tolist() == [1, 1, -2, -1, -2, -127, -127, -127, 126]
    with pytest.raises(ValueError):
        block_exponent(amax, "ceil")


@pytest.mark.parametrize("fmt, scale, first", [(FLOOR, 127, 6.0), (EVEN, 128, 8.0)])
def test_block_7p5_floor_vs_even(fmt, scale, first):
    w = np.ones((1, 32), F32)
    w[0, 0] = 7.5
    q = quantize_weight(w, fmt)
    assert q.scales.tolist() == [[scale]]
    expected = np.ones((1, 32), F32)
    expected[0, 0] = first
    assert np.array_equal(dequantize_weight(q), expected)


def test_zero_block_and_ragged_padding():
    w = np.zeros((2, 40), F32)
    w[1, 32:] = np.linspace(-3, 3, 8)
    q = quantize_weight(w, FLOOR)
    assert q.codes.shape == (2, 2, 32) and q.scales.dtype == np.uint8 and q.zero_points is None
    assert q.scales[0].tolist() == [0, 0] and q.scales[1, 0] == 0  # all-zero blocks: E8M0 code 0 (2^-127)
    assert not q.codes[0].any() and not q.codes[1, 0].any()
    assert not q.codes[1, 1, 8:].any()  # padding holds code 0
    assert block_exponent(np.array([3.0], F32))[0] + 127 == q.scales[1, 1]
    assert np.array_equal(dequantize_weight(q)[1, 32:], frexp_reference(np.pad(w[1, 32:], (0, 24)))[:8])


@pytest.mark.parametrize("rule", ["floor", "even"])
def test_weights_match_frexp_reference(rule):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((16, 256)) * np.exp2(rng.integers(-20, 20, (16, 1)))).astype(F32)
    w[3, 64:96] = 0
    w[4, :32] = 7.5 * np.exp2(rng.integers(-5, 5, 32))  # amax on exact powers / ties
    got = dequantize_weight(quantize_weight(w, WeightFormat("mxfp4", 32, scale_rule=rule)))
    assert np.array_equal(got, frexp_reference(w, rule))


def test_tiny_blocks_clamp_to_2_pow_minus_127():
    w = np.full((1, 32), 2.0**-128, F32)
    q = quantize_weight(w, FLOOR)
    assert q.scales.tolist() == [[0]]
    assert np.array_equal(dequantize_weight(q), np.full((1, 32), 2.0**-128, F32))  # 0.5 * 2^-127


def test_given_exponents_round_trip():
    w = np.random.default_rng(4).normal(size=(3, 64)).astype(np.float32)
    fmt = WeightFormat("mxfp4", 32)
    codes = quantize_weight(w, fmt).scales + np.uint8(1)  # one binade up: nothing saturates
    q = quantize_weight(w, fmt, codes)
    assert np.array_equal(q.scales, codes)
    assert np.array_equal(dequantize_weight(q),
                          e2m1_decode(e2m1_encode(w.reshape(3, 2, 32) / e8m0_decode(codes)[..., None])).reshape(3, 64)
                          * np.repeat(e8m0_decode(codes), 32, 1))
    again = quantize_weight(dequantize_weight(q), fmt, q.scales)
    assert np.array_equal(again.codes, q.codes)
