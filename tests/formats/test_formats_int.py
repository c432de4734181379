"""INT4 / INT8 weights: the reference RTN rule, ragged groups, asymmetric GPTQ, idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from qpasses.formats import QuantizedWeight, WeightFormat, dequantize_weight, quantize_weight
from qpasses.formats.weight import split_blocks

F32 = np.float32
ALL_FORMATS = [
    WeightFormat("int4", 128), WeightFormat("int4", 32), WeightFormat("int4", 0), WeightFormat("int8", 64),
    WeightFormat("int8", 0), WeightFormat("int4", 64, symmetric=False), WeightFormat("int4", 0, symmetric=False),
    WeightFormat("int8", 32, symmetric=False), WeightFormat("mxfp4", 32), WeightFormat("mxfp4", 32, scale_rule="even"),
]


def int_sym_reference(x, bits, group):
    """docs/methods.md#int4 symmetric (s = amax/qmax, round(x / s) half-even, clamp), one group per row."""
    qmax = F32(2 ** (bits - 1) - 1)
    xg = x.reshape(-1, group)
    amax = np.abs(xg).max(-1, keepdims=True)
    s = np.where(amax > 0, amax / qmax, F32(1)).astype(F32)
    return (np.clip(np.rint(xg / s), -qmax - 1, qmax) * s).reshape(x.shape)


def weights(n=12, k=576, seed=0):
    """Gaussian rows with outliers, a zero row, a constant row, a row of exact .5 ties and a positive row."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * np.exp2(rng.integers(-8, 4, (n, 1)))).astype(F32)
    w[0, ::37] *= 30
    w[1] = 0
    w[2] = -0.25
    w[3] = (np.arange(k) % 15 - 7 + 0.5).astype(F32) * F32(0.125)
    w[3, ::64] = 7 * 0.125
    w[4] = np.abs(w[4])
    return w


@pytest.mark.parametrize("bits, block", [(4, 32), (4, 64), (8, 32), (8, 64)])
def test_symmetric_matches_reference_rtn(bits, block):
    w = weights()
    q = quantize_weight(w, WeightFormat(f"int{bits}", block))
    assert np.array_equal(dequantize_weight(q), int_sym_reference(w, bits, block))
    zp = 8 if bits == 4 else 128
    assert q.codes.dtype == np.uint8 and q.scales.dtype == F32 and (q.zero_points == zp).all()
    assert q.codes.max() <= 2 * zp - 1
    assert q.scales[1].tolist() == [1.0] * q.nblocks and (q.codes[1] == zp).all()  # amax == 0 -> s = 1, q = 0


def test_per_channel_is_one_block_of_k():
    w = weights(k=200)
    q = quantize_weight(w, WeightFormat("int8", 0))
    assert q.codes.shape == (12, 1, 200) and q.block == 200
    assert np.array_equal(dequantize_weight(q), int_sym_reference(w, 8, 200))


def test_ragged_group_576_by_128():
    w = weights()
    q = quantize_weight(w, WeightFormat("int4", 128))
    assert q.codes.shape == (12, 5, 128) and q.scales.shape == (12, 5)
    assert (q.codes[:, 4, 64:] == 8).all()  # padding = code of 0
    tail = w[:, 512:]
    assert np.array_equal(q.scales[:, 4], np.where(np.abs(tail).max(1) > 0, np.abs(tail).max(1) / F32(7), F32(1)))
    assert np.array_equal(dequantize_weight(q)[:, 512:], int_sym_reference(tail, 4, 64))


def gptq_asym(blocks, bits, scales=None):
    """docs/methods.md#int4 asymmetric rule on [..., B] blocks; scales default to (hi - lo) / L in float32."""
    top = F32(2**bits - 1)
    lo, hi = np.minimum(blocks.min(-1), F32(0)), np.maximum(blocks.max(-1), F32(0))
    flat = lo == hi
    lo, hi = np.where(flat, F32(-1), lo), np.where(flat, F32(1), hi)
    s = ((hi - lo) / top).astype(F32) if scales is None else scales
    z = np.rint(-lo / s)
    return np.clip(np.rint(blocks / s[..., None]) + z[..., None], 0, top), s, z, hi


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_gptq_convention(bits):
    w = weights()
    q = quantize_weight(w, WeightFormat(f"int{bits}", 64, symmetric=False))
    b = split_blocks(w, 64)
    _, plain, _, _ = gptq_asym(b, bits)
    assert np.abs(q.scales / plain - 1).max() <= 2.0 ** -(24 - bits)  # rounded to 24 - bits significant bits
    assert not (q.scales.view(np.int32) & ((1 << bits) - 1)).any()
    codes, _, z, hi = gptq_asym(b, bits, q.scales)
    top = 2**bits - 1
    codes = np.where((b == hi[..., None]) & (hi > 0)[..., None], top, codes)  # the block max takes the top code
    assert np.array_equal(q.zero_points, z.astype(np.uint8)) and np.array_equal(q.codes, codes.astype(np.uint8))
    # all-zero block: lo, hi = -1, 1, s ~ 2/L, z = rint(-lo / s) = (L - 1) / 2 as -lo / s lands just below the tie
    assert (q.zero_points[1] == top // 2).all() and (q.codes[1] == top // 2).all() and not dequantize_weight(q)[1].any()
    assert (q.zero_points[4] == 0).all()  # non-negative rows: lo = 0
    assert np.abs(dequantize_weight(q) - w).max() <= 0.51 * q.scales.max()


def test_asymmetric_codes_are_gptq_codes_on_gaussian_weights():
    w = np.random.default_rng(4).standard_normal((64, 512)).astype(F32)
    q = quantize_weight(w, WeightFormat("int4", 32, symmetric=False))
    codes, _, _, _ = gptq_asym(split_blocks(w, 32), 4)
    assert (q.codes != codes).mean() < 1e-4


def test_asymmetric_block_with_lo_equal_minus_hi_spans_all_codes():
    w = np.tile(np.array([-0.45, 0.45, 0.15, -0.15], F32), 8)[None]  # -lo / s = 7.5: a tie at both ends
    for fmt in (WeightFormat("int4", 32, symmetric=False), WeightFormat("int8", 32, symmetric=False)):
        q = quantize_weight(w, fmt)
        assert q.codes.min() == 0 and q.codes.max() == 2**fmt.bits - 1
        d = dequantize_weight(q)
        assert np.array_equal(dequantize_weight(quantize_weight(d, fmt)), d)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_dequantize_quantize_is_a_fixed_point(fmt):
    for seed in range(3):
        w = weights(k=320, seed=seed)
        q = quantize_weight(w, fmt)
        d = dequantize_weight(q)
        q2 = quantize_weight(d, fmt)
        assert np.array_equal(q2.codes, q.codes) and np.array_equal(q2.scales, q.scales)
        assert (q.zero_points is None and q2.zero_points is None) or np.array_equal(q2.zero_points, q.zero_points)
        assert np.array_equal(dequantize_weight(q2), d)


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_fixed_point_on_tie_heavy_blocks(bits):
    rng = np.random.default_rng(5)
    fmt = WeightFormat(f"int{bits}", 16, symmetric=False)
    for w in (rng.standard_normal((64, 512)) + rng.uniform(-2, 2, (64, 1)),  # shifted Gaussian
              rng.integers(-7, 9, (64, 512)) * 0.1 + 0.05,  # every element an exact tie
              np.sign(rng.standard_normal((64, 512))) * rng.integers(0, 4, (64, 512)) * 0.15):  # lo == -hi
        d = dequantize_weight(quantize_weight(w.astype(F32), fmt))
        assert np.array_equal(dequantize_weight(quantize_weight(d, fmt)), d)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        quantize_weight(np.array([[np.nan, 1.0]], F32), WeightFormat("int4", 0))
    with pytest.raises(ValueError):
        quantize_weight(np.ones(4, F32), WeightFormat("int4", 0))
    with pytest.raises(ValueError):
        QuantizedWeight(WeightFormat("int4", 32), (2, 64), np.zeros((2, 2, 32), np.int8),
                        np.ones((2, 2), F32), np.full((2, 2), 8, np.uint8))
    with pytest.raises(ValueError):
        QuantizedWeight(WeightFormat("mxfp4", 32), (2, 64), np.zeros((2, 2, 32), np.uint8),
                        np.ones((2, 2), np.uint8), np.full((2, 2), 8, np.uint8))


def test_given_scales_round_to_nearest_and_round_trip():
    w = np.random.default_rng(3).normal(size=(6, 100)).astype(np.float32)
    fmt = WeightFormat("int4", 32)
    scales = quantize_weight(w, fmt).scales * np.float32(0.8)  # clips the block maxima to -8 / 7
    q = quantize_weight(w, fmt, scales)
    assert np.array_equal(q.scales, scales)
    blocks = np.concatenate([w, np.zeros((6, 28), np.float32)], 1).reshape(6, 4, 32)
    assert np.array_equal(q.codes.astype(np.int32) - 8, np.clip(np.rint(blocks / scales[..., None]), -8, 7))
    again = quantize_weight(dequantize_weight(q), fmt, q.scales)
    assert np.array_equal(again.codes, q.codes) and np.array_equal(again.scales, q.scales)


def test_given_scales_are_checked():
    w = np.ones((2, 64), np.float32)
    for fmt, scales, match in [(WeightFormat("int4", 32), np.ones((2, 3), np.float32), "shape"),
                               (WeightFormat("int4", 32), -np.ones((2, 2), np.float32), "positive"),
                               (WeightFormat("int4", 32, symmetric=False), np.ones((2, 2), np.float32), "symmetric"),
                               (WeightFormat("mxfp4", 32), np.full((2, 2), 255, np.uint8), "E8M0")]:
        with pytest.raises(ValueError, match=match):
            quantize_weight(w, fmt, scales)
