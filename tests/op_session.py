"""One-node op models (qpasses.runtime.op_models) run in an onnxruntime session, for the kernel tests."""

from __future__ import annotations

import numpy as np
import onnx

from qpasses.runtime import session


def run(model: onnx.ModelProto, A: np.ndarray, feeds: dict, tmp_path, threads: int = 1) -> np.ndarray:
    path = tmp_path / "op.onnx"
    onnx.save(model, path)
    return session(path, threads=threads).run(["Y"], {"A": A, **feeds})[0]
