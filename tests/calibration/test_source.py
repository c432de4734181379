"""CalibrationSource: statistics of the graph as it is now, on either stage, cached by fingerprint."""

import numpy as np
import pytest
import torch

from qpasses.calibration.source import CalibrationSource
from qpasses.calibration.stats import StatsSpec
from qpasses.export.capture import capture
from qpasses.export.onnx_export import to_onnx
from qpasses.ir.fx_ops import TRANSLATIONS
from qpasses.ir.fx_stage import FxStage
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.models.tiny import build_byte_tokenizer, build_tiny_llama

SPEC = StatsSpec(quantiles=(0.99,), max_tokens=1 << 16)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text("Debian is a free operating system made by volunteers around the world. " * 160)
    return CalibrationSource(build_byte_tokenizer(), n=2, seed=0, text=text, progress=False)


@pytest.fixture(scope="module")
def stage():
    return FxStage(capture(build_tiny_llama()))


def pick(sites):
    return [s for s in sites if s.name.endswith(("q_proj", "down_proj"))]


def test_windows_are_calibration_and_heldout(source):
    calib, heldout = source.windows()
    assert tuple(calib.shape) == (2, 512) and tuple(heldout.shape) == (16, 512)


def test_stats_are_cached_until_the_graph_changes(source, stage):
    sites = pick(stage.sites())
    first = source.stats(stage, sites, SPEC)
    assert set(first) == {s.name for s in sites}
    assert source.stats(stage, sites, SPEC) is not None and source.cache.hits >= 1
    q = next(s for s in stage.sites() if s.name.endswith("layers.0.self_attn.q_proj"))
    misses = source.cache.misses
    q.set_weight(q.weight())  # any edit is a new fingerprint
    source.stats(stage, sites, SPEC)
    assert source.cache.misses == misses + 1


def test_onnx_stage_gives_the_same_statistics(source, stage):
    sites = pick(stage.sites())
    fx = source.stats(stage, sites, SPEC)
    models = to_onnx(stage.programs, TRANSLATIONS)
    onnx_stage = OnnxStage({"logits": models.logits})
    ox = source.stats(onnx_stage, pick(onnx_stage.sites()), SPEC)
    assert set(ox) == set(fx)
    for name in fx:
        np.testing.assert_allclose(ox[name].absmax, fx[name].absmax, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ox[name].mean, fx[name].mean, rtol=1e-4, atol=1e-6)


def test_quantize_activations_invalidates(source, stage):
    from qpasses.passes.base import Context
    from qpasses.passes.manager import PassManager
    from qpasses.passes.quantize_activations import QuantizeActivations

    source.stats(stage, pick(stage.sites()), SPEC)
    assert len(source.cache) > 0
    ctx = Context(calibration=source)
    manager = PassManager([QuantizeActivations(format="int8", block_size=32)], to_onnx=lambda g: g, log=lambda s: None)
    with torch.no_grad():
        manager._run_one(0, manager.passes[0], stage, ctx, [])
    assert len(source.cache) == 0
