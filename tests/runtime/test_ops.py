"""The qpasses custom ops against the numpy reference built from qpasses.formats, under every ISA."""

from __future__ import annotations

import numpy as np
import pytest
from op_session import run

from qpasses.formats import ActFormat, WeightFormat, fake_quant_activation_np, quantize_weight
from qpasses.formats.packing import pack_int_blocked
from qpasses.numerics.hadamard import block_hadamard_np
from qpasses.runtime import available_isas
from qpasses.runtime.op_models import op_model, random_weights
from qpasses.runtime.ops import OpConfig
from qpasses.runtime.ort import ort_session
from qpasses.runtime.reference import check_close, reference


@pytest.fixture(params=available_isas())
def isa(request, monkeypatch):
    monkeypatch.setenv("QPASSES_ISA", request.param)
    return request.param


def weight_args(inputs: dict) -> dict:
    """The op's named weight inputs -> reference() keywords."""
    return {"B": inputs["B"], "S": inputs.get("E", inputs.get("scales")), "zero_points": inputs.get("zero_points")}


def check(cfg: OpConfig, inputs: dict, A: np.ndarray, tmp_path, constant=True, threads=1, **extra):
    model, feeds = op_model(cfg, inputs, A.shape, constant=constant)
    y = run(model, A, feeds, tmp_path, threads=threads)
    assert y.shape == (*A.shape[:-1], cfg.N) and y.dtype == np.float32
    optional = {k: inputs[k] for k in ("bias", "L", "R", "D") if k in inputs}
    ref, bound = reference(cfg, A, **weight_args(inputs), **optional)
    return check_close(y, ref, bound)


ACTS = [(0, "int", 32), (8, "int", 32), (8, "int", 0), (4, "int", 32), (4, "int", 0), (4, "mxfp", 32)]


@pytest.mark.parametrize("op", ["MatMulMXFP4", "MatMulInt4"])
@pytest.mark.parametrize("act_bits,act_format,act_block", ACTS)
def test_outputs_match_reference(isa, op, act_bits, act_format, act_block, tmp_path):
    rng = np.random.default_rng(act_bits + act_block)
    cfg = OpConfig(op, K=96 + 4, N=40, act_bits=act_bits, act_format=act_format, act_block=act_block)
    A = rng.standard_normal((2, 3, cfg.K)).astype(np.float32) * 3
    check(cfg, random_weights(cfg, rng), A, tmp_path)


@pytest.mark.parametrize("block_size,K", [(16, 72), (32, 64), (64, 192), (128, 256), (96, 96)])
@pytest.mark.parametrize("zero_points", [False, True])
def test_int4_block_sizes_and_zero_points(isa, block_size, K, zero_points, tmp_path):
    rng = np.random.default_rng(block_size)
    for act_bits in (0, 8):
        cfg = OpConfig("MatMulInt4", K=K, N=24, act_bits=act_bits, block_size=block_size)
        check(cfg, random_weights(cfg, rng, zero_points=zero_points), rng.standard_normal((5, K)).astype(np.float32),
              tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("lowrank_input", ["raw", "rotated"])
def test_rotation_signs_bias_and_low_rank(isa, dtype, lowrank_input, tmp_path):
    rng = np.random.default_rng(7)
    for op, act_bits in [("MatMulMXFP4", 8), ("MatMulInt4", 4), ("MatMulMXFP4", 0)]:
        cfg = OpConfig(op, K=128, N=48, act_bits=act_bits, hadamard_block=64, lowrank_input=lowrank_input)
        inputs = random_weights(cfg, rng)
        inputs["bias"] = rng.standard_normal(cfg.N).astype(np.float32)
        inputs["L"] = (rng.standard_normal((cfg.K, 8)) * 0.1).astype(dtype)
        inputs["R"] = (rng.standard_normal((8, cfg.N)) * 0.1).astype(dtype)
        inputs["D"] = rng.choice([-1.0, 1.0], cfg.K).astype(np.float32)
        check(cfg, inputs, rng.standard_normal((3, cfg.K)).astype(np.float32), tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("rank,N", [(1, 5), (7, 77), (16, 64), (33, 200)])  # every loop of the epilogue and its tails
def test_low_rank_widths(isa, dtype, rank, N, tmp_path):
    rng = np.random.default_rng(rank)
    for op, act_bits in [("MatMulMXFP4", 0), ("MatMulInt4", 8)]:
        cfg = OpConfig(op, K=96, N=N, act_bits=act_bits)
        inputs = random_weights(cfg, rng)
        inputs["L"] = (rng.standard_normal((cfg.K, rank)) * 0.1).astype(dtype)
        inputs["R"] = (rng.standard_normal((rank, cfg.N)) * 0.1).astype(dtype)
        check(cfg, inputs, rng.standard_normal((2, cfg.K)).astype(np.float32), tmp_path)


def test_low_rank_fp16_values_are_exact(isa, tmp_path):
    """W = 0, A = I, R = I: Y is L itself, so every fp16 value of L (subnormals, ±0, the largest) must
    reach the output converted exactly, through x L and T R, on every ISA path."""
    rank = k = 64
    cfg = OpConfig("MatMulInt4", K=k, N=rank, act_bits=0, block_size=32)
    packed = pack_int_blocked(quantize_weight(np.zeros((rank, k), np.float32), WeightFormat("int4", 32)))
    bits = np.random.default_rng(5).choice(np.arange(2**16, dtype=np.uint16), k * rank, replace=False)
    bits[:4] = [0x0001, 0x8001, 0x7BFF, 0x03FF]  # smallest subnormal (±), largest finite, largest subnormal
    values = bits.view(np.float16)
    values[~np.isfinite(values)] = 1.5
    inputs = {"B": packed["B"], "scales": packed["scales"].reshape(rank, -1), "L": values.reshape(k, rank),
              "R": np.eye(rank, dtype=np.float16)}
    model, feeds = op_model(cfg, inputs, (k, k))
    y = run(model, np.eye(k, dtype=np.float32), feeds, tmp_path)
    np.testing.assert_array_equal(y, values.reshape(k, rank).astype(np.float32))  # (a sum makes -0 +0)


def test_graph_input_weights_and_threads(isa, tmp_path):
    """Weights that are not initializers are packed per call; two threads split the columns."""
    rng = np.random.default_rng(3)
    for op in ("MatMulMXFP4", "MatMulInt4"):
        cfg = OpConfig(op, K=576, N=200, act_bits=8)
        A = rng.standard_normal((4, cfg.K)).astype(np.float32)
        check(cfg, random_weights(cfg, rng), A, tmp_path, constant=False, threads=2)
        check(cfg, random_weights(cfg, rng), A[:1], tmp_path, threads=2)


IDENTITY_ACTS = [ActFormat("int8", 32), ActFormat("int8", 0), ActFormat("int4", 32), ActFormat("int4", 0),
                 ActFormat("mxfp4", 32)]


@pytest.mark.parametrize("fmt", IDENTITY_ACTS, ids=lambda f: f"{f.kind}-{f.block_size}")
@pytest.mark.parametrize("hadamard_block, k", [(0, 64), (32, 64), (0, 77)])  # 77: tails in every loop
def test_activation_codes_and_scales_are_bit_exact(isa, fmt, hadamard_block, k, tmp_path):
    """With W = I (INT4 code 9, scale 1, per channel), Y is the op's dequantized activation: every code
    and scale must equal the formats' oracle bit for bit (each y is one rounding of code * scale)."""
    rng = np.random.default_rng(11)
    cfg = OpConfig("MatMulInt4", K=k, N=k, act_bits=8 if fmt.kind == "int8" else 4,
                   act_format="mxfp" if fmt.kind == "mxfp4" else "int", act_block=fmt.block_size,
                   hadamard_block=hadamard_block, block_size=k)
    codes = np.full((k, k), 8, np.uint8)
    np.fill_diagonal(codes, 9)
    padded = np.pad(codes, ((0, 0), (0, k % 2)), constant_values=8)
    inputs = {"B": (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(k, 1, -1),
              "scales": np.ones((k, 1), np.float32)}
    A = (rng.standard_normal((6, k)) * np.exp(rng.uniform(-8, 8, (6, 1)))).astype(np.float32)
    A[0, :5] = [0.0, -0.0, 1e-30, 3.5, -3.5]
    A[1] = 0.0
    model, _ = op_model(cfg, inputs, A.shape)
    y = run(model, A, {}, tmp_path)
    np.testing.assert_array_equal(y, fake_quant_activation_np(block_hadamard_np(A, hadamard_block), fmt))


def test_int4_w4a8_matches_matmulnbits_accuracy_level_4(isa, tmp_path):
    """The same bytes through com.microsoft.MatMulNBits (int8 activations per 32-block, as ours)."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(5)
    cfg = OpConfig("MatMulInt4", K=576, N=96, act_bits=8)
    inputs = random_weights(cfg, rng)
    A = rng.standard_normal((3, cfg.K)).astype(np.float32)
    model, _ = op_model(cfg, inputs, A.shape)
    ours = run(model, A, {}, tmp_path)
    node = model.graph.node[0]
    nbits = helper.make_node("MatMulNBits", list(node.input), ["Y"], domain="com.microsoft", K=cfg.K, N=cfg.N,
                             bits=4, block_size=32, accuracy_level=4)
    model.graph.ClearField("node")
    model.graph.node.append(nbits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, tmp_path / "nbits.onnx")
    theirs = ort_session(tmp_path / "nbits.onnx", threads=1).run(["Y"], {"A": A})[0]
    assert np.abs(ours - theirs).max() <= 2e-6 * np.abs(theirs).max()
