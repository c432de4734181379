"""One tiny model captured, exported and deployed once per session: the dynamo exporter costs
several seconds, so every export test shares these (read-only; a test that edits a parameter
restores it)."""

from __future__ import annotations

import onnx_ir as ir
import onnxruntime as ort
import pytest

from qpasses.export.capture import capture
from qpasses.export.deploy import save_deployment
from qpasses.export.onnx_export import OnnxModels, to_onnx
from qpasses.ir.cleanup import finalize
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama
from qpasses.passes.base import Context
from qpasses.passes.fuse_attention import FuseAttention
from qpasses.passes.fuse_norms import FuseNorms

METADATA = {"qpasses.recipe": "test", "qpasses.note": "tiny"}


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_llama("tiny-llama")


@pytest.fixture(scope="session")
def programs(tiny):
    return capture(tiny)


@pytest.fixture(scope="session")
def onnx_models(programs):
    return to_onnx(programs)


@pytest.fixture(scope="session")
def deployed(onnx_models, tmp_path_factory):
    """The folder save_deployment wrote for finalized copies of the exported graphs."""
    models = OnnxModels(*(ir.from_proto(ir.to_proto(m)) for m in (onnx_models.logits, onnx_models.decoder)))
    finalize(models.logits)
    finalize(models.decoder)
    out = tmp_path_factory.mktemp("deploy") / "tiny"
    save_deployment(models, out, build_byte_tokenizer(), METADATA)
    return out


@pytest.fixture(scope="session")
def fused(onnx_models):
    """Copies of the exported graphs after fuse_norms and fuse_attention, with the rewrite counts."""
    models = OnnxModels(*(ir.from_proto(ir.to_proto(m)) for m in (onnx_models.logits, onnx_models.decoder)))
    stage, ctx = OnnxStage({"logits": models.logits, "decoder": models.decoder}), Context()
    counts = {**FuseNorms().run(stage, ctx), **FuseAttention(max_positions=64).run(stage, ctx)}
    return models, counts


@pytest.fixture(scope="session")
def fused_deployed(fused, tmp_path_factory):
    models = OnnxModels(*(ir.from_proto(ir.to_proto(m)) for m in (fused[0].logits, fused[0].decoder)))
    finalize(models.logits)
    finalize(models.decoder)
    out = tmp_path_factory.mktemp("fused") / "tiny"
    save_deployment(models, out, build_byte_tokenizer(), METADATA)
    return out


@pytest.fixture(scope="session")
def ort_session():
    """path -> onnxruntime CPU session on one thread (the machine is shared)."""

    def make(path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    return make
