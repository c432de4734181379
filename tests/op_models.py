"""Running the one-node op models (qpasses.runtime.op_models) in a session, for the kernel tests."""

from __future__ import annotations

import numpy as np
import onnx

from qpasses.runtime import session
from qpasses.runtime.op_models import op_model, random_weights  # noqa: F401  (the tests import them from here)


def run(model: onnx.ModelProto, A: np.ndarray, feeds: dict, tmp_path, threads: int = 1) -> np.ndarray:
    path = tmp_path / "op.onnx"
    onnx.save(model, path)
    return session(path, threads=threads).run(["Y"], {"A": A, **feeds})[0]
