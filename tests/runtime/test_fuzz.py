"""Kernel fuzzing: random MatMulMXFP4 / MatMulInt4 nodes, valid or broken in one or two random ways
(attributes, dims, dtypes, initializer sizes, E8M0 255, A not matching K, low-rank and sign inputs).
Each must be rejected with an onnxruntime error (at session creation or at run) or computed within
the kernels' promise against the numpy reference; never a crash. test_sanitizers.py runs this file
under ASan + UBSan too."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import onnx
import pytest

from qpasses.errors import InputError
from qpasses.runtime import session
from qpasses.runtime.op_models import op_model, random_weights
from qpasses.runtime.ops import OpConfig
from qpasses.runtime.reference import check_close, reference

CASES = int(os.environ.get("QPASSES_FUZZ_CASES", "1000"))


def valid_config(rng) -> OpConfig:
    op = rng.choice(["MatMulMXFP4", "MatMulInt4"])
    k = int(rng.choice([32, 64, 96, 128, 256, int(rng.integers(1, 300))]))
    bits = int(rng.choice([0, 8, 4]))
    fmt = "mxfp" if bits == 4 and rng.random() < 0.5 else "int"
    block = 32 if fmt == "mxfp" else int(rng.choice([32, 0]))
    had = [h for h in (0, 16, 32, 64) if h == 0 or k % h == 0]
    sizes = [b for b in (16, 32, 64, 128) if b <= k] + [k]
    if bits and not block:  # per-token int activations need weight blocks of at least 32
        big = [b for b in sizes if b >= 32]
        sizes, block = (big, 0) if big else (sizes, 32)
    return OpConfig(str(op), K=k, N=int(rng.integers(1, 70)), act_bits=bits, act_format=fmt, act_block=block,
                    hadamard_block=int(rng.choice(had)), block_size=int(rng.choice(sizes)))


def shrink(x: np.ndarray, rng) -> np.ndarray:
    """The array with one dimension one shorter or longer (a wrong initializer size)."""
    axis = int(rng.integers(x.ndim))
    n = x.shape[axis] + (1 if x.shape[axis] <= 1 or rng.random() < 0.5 else -1)
    shape = list(x.shape)
    shape[axis] = n
    return np.resize(x, shape).astype(x.dtype)


def mutate(kind: str, cfg: OpConfig, inputs: dict, attrs: dict, a_shape: list, rng) -> str:
    """Break the node in one way, in place; returns the kind applied ("batched", a valid change,
    where `kind` does not apply to this op)."""
    scale_key = "E" if cfg.mxfp4 else "scales"
    if kind == "attr_K":
        attrs["K"] = int(rng.choice([0, -1, cfg.K + 1, cfg.K * 2, cfg.K - 1 if cfg.K > 1 else 2]))
    elif kind == "attr_N":
        attrs["N"] = int(rng.choice([0, -3, cfg.N + 1, cfg.N * 3 + 1]))
    elif kind == "act_bits":
        attrs["act_bits"] = int(rng.choice([1, 2, 3, 5, 16, -8]))
    elif kind == "act_format":
        attrs["act_format"] = str(rng.choice(["", "fp8", "MXFP", "int4"]))
        attrs["act_bits"] = int(rng.choice([4, 8]))
    elif kind == "act_block":
        attrs["act_block"] = int(rng.choice([1, 16, 33, 64, -32]))
        attrs["act_bits"] = int(rng.choice([4, 8]))
    elif kind == "hadamard":
        attrs["hadamard_block"] = int(rng.choice([3, 48, -16, 1 << 12, cfg.K + 1]))
    elif kind == "block_size" and not cfg.mxfp4:
        attrs["block_size"] = int(rng.choice([0, 8, 24, 48, -32, cfg.K + 16]))
    elif kind == "B_size":
        inputs["B"] = shrink(inputs["B"], rng)
    elif kind == "scale_size":
        inputs[scale_key] = shrink(inputs[scale_key], rng)
    elif kind == "B_dtype":
        inputs["B"] = inputs["B"].astype(rng.choice([np.int8, np.int32, np.float32]))
    elif kind == "scale_dtype":
        inputs[scale_key] = inputs[scale_key].astype(np.int8 if cfg.mxfp4 else rng.choice([np.float64, np.int32]))
    elif kind == "e8m0_255" and cfg.mxfp4 and inputs["E"].dtype == np.uint8:
        e = inputs["E"].copy()
        e.flat[int(rng.integers(e.size))] = 255
        inputs["E"] = e
    elif kind == "A_width":
        a_shape[-1] = cfg.K + int(rng.choice([-1, 1, 7])) if cfg.K > 1 else 2
    elif kind == "A_rank":
        a_shape[:] = a_shape[-1:]
    elif kind == "lowrank":
        r = int(rng.integers(1, 9))
        L = rng.standard_normal((cfg.K, r)).astype(np.float32)
        R = rng.standard_normal((r, cfg.N)).astype(np.float32)
        broken = int(rng.integers(4))
        if broken == 0:
            L = L[:, :-1] if r > 1 else L[:-1]
        elif broken == 1:
            R = R.astype(np.float16)
        elif broken == 2:
            R = R[:, :-1] if cfg.N > 1 else np.zeros((r + 1, 1), np.float32)
        else:
            inputs.pop("R", None)
        inputs["L"] = L
        if broken != 3:
            inputs["R"] = R
    elif kind == "signs":
        inputs["D"] = rng.choice([-1.0, 1.0], size=cfg.K + int(rng.choice([-1, 1, 5]))).astype(np.float32)
        attrs["hadamard_block"] = cfg.hadamard_block or (32 if cfg.K % 32 == 0 else 0)
    elif kind == "bias":
        inputs["bias"] = rng.standard_normal(cfg.N + int(rng.choice([-1, 1, 2])) or 2).astype(np.float32)
    else:  # not applicable to this op: a valid extra (batched A)
        a_shape[:] = [2, *a_shape]
        return "batched"
    return kind


VALID = {"batched", "A_rank"}  # changes that keep the node valid (a 1-D A is a single row)
KINDS = ("attr_K", "attr_N", "act_bits", "act_format", "act_block", "hadamard", "block_size", "B_size",
         "scale_size", "B_dtype", "scale_dtype", "e8m0_255", "A_width", "A_rank", "lowrank", "signs", "bias")


def one_case(i: int, tmp_path) -> str:
    rng = np.random.default_rng(1000 + i)
    cfg = valid_config(rng)
    inputs = random_weights(cfg, rng)
    if rng.random() < 0.3:  # a valid low-rank branch, sometimes in fp16
        r = int(rng.integers(1, 9))
        dt = np.float16 if rng.random() < 0.5 else np.float32
        inputs["L"] = (rng.standard_normal((cfg.K, r)) * 0.1).astype(dt)
        inputs["R"] = (rng.standard_normal((r, cfg.N)) * 0.1).astype(dt)
    attrs, a_shape = {}, [int(rng.integers(1, 6)), cfg.K]
    kinds = [] if rng.random() < 0.3 else list(rng.choice(KINDS, size=int(rng.integers(1, 3)), replace=False))
    applied = {mutate(str(kind), cfg, inputs, attrs, a_shape, rng) for kind in kinds}
    constant = bool(rng.random() < 0.7)
    try:
        model, feeds = op_model(cfg, inputs, tuple(a_shape), constant=constant, **attrs)
    except Exception:  # noqa: BLE001  (onnx itself refuses to build it: nothing reaches the kernel)
        return "unbuildable"
    path = tmp_path / f"case{i}.onnx"
    onnx.save(model, path)
    a = rng.standard_normal(a_shape).astype(np.float32)
    valid = applied <= VALID
    try:
        sess = session(path, threads=int(rng.integers(1, 3)))
    except InputError as e:
        assert not valid, f"case {i}: a valid node ({cfg}, {applied or 'unchanged'}) was rejected: {e}"
        return "rejected at load"
    try:
        y = sess.run(["Y"], {"A": a, **feeds})[0]
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        assert type(e).__module__.startswith("onnxruntime"), f"case {i} ({applied}): {type(e)}: {e}"
        assert not valid, f"case {i}: a valid node ({cfg}, {applied or 'unchanged'}) failed: {e}"
        return "rejected at run"
    # accepted: it must compute what its attributes and inputs say (e.g. K=31 on blocks padded from 32)
    eff = dataclasses.replace(cfg, **{k: v for k, v in attrs.items() if k in OpConfig.__dataclass_fields__})
    ref, bound = reference(eff, a, inputs["B"], inputs["E"] if cfg.mxfp4 else inputs["scales"],
                           bias=inputs.get("bias"), L=inputs.get("L"), R=inputs.get("R"), D=inputs.get("D"))
    check_close(y, ref, bound)
    return "computed"


@pytest.mark.timeout(1800)
def test_fuzzed_nodes_are_rejected_or_computed_right(tmp_path):
    seen = Counter(one_case(i, tmp_path) for i in range(CASES))
    print(f"\nfuzz: {CASES} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())))
    assert seen["computed"] >= CASES // 5 and seen["rejected at load"] + seen["rejected at run"] >= CASES // 3, seen
