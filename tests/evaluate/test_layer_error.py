"""The layer error probe on tiny-llama: its numbers are the formula of docs/evaluation.md#the-report computed
by hand on the Hugging Face model, it is off for rotation-only recipes and when disabled, and
it lands in report.json."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qpasses.calibration.source import CalibrationSource
from qpasses.cli.main import main
from qpasses.evaluate.layer_error import LayerErrorProbe, layer_error, pass_order, summary
from qpasses.export.capture import capture
from qpasses.formats import ActFormat, WeightFormat, dequantize_weight, quantize_weight
from qpasses.formats.act import fake_quant_activation_np
from qpasses.ir.fx_stage import FxStage
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.base import Context
from qpasses.passes.manager import PassManager
from qpasses.passes.quantize_activations import QuantizeActivations
from qpasses.passes.quantize_weights import QuantizeWeights
from qpasses.recipe import load_recipe

BENCH = Path(__file__).resolve().parents[2] / "bench" / "recipes"
WFMT, AFMT = WeightFormat("int4", 32), ActFormat("int8", 32)


class Windows(CalibrationSource):
    """Random byte windows, no text: 2 calibration and 2 held-out windows of 64 tokens."""

    def __init__(self):
        super().__init__(tokenizer=None, n=2, seed=0, progress=False)
        gen = torch.Generator().manual_seed(2)
        self._windows = (torch.randint(3, 259, (2, 64), generator=gen), torch.randint(3, 259, (2, 64), generator=gen))


def run_fx(passes, probe_passes=None):
    """Run the stage-A passes on tiny-llama with the probe; returns (probe, hf model, ctx)."""
    model = build_tiny_llama()
    graph, ctx = FxStage(capture(model)), Context(ignore=("lm_head",), calibration=Windows())
    probe = LayerErrorProbe(passes if probe_passes is None else probe_passes)
    probe.start(graph, ctx)

    def no_export(g):
        return SimpleNamespace(stage="onnx", graph_count=1)

    PassManager(passes, to_onnx=no_export, log=lambda s: None, after_pass=lambda g, r: probe.after(g, ctx, r)).run(
        graph, ctx
    )
    return probe, model, ctx


def linear_inputs(model, names, windows):
    """HF module name -> every input row [T, K] of that linear over the windows (float64)."""
    rows, mods = {}, dict(model.named_modules())
    hooks = [
        mods[n].register_forward_pre_hook(
            lambda _m, a, n=n: rows.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]).double())
        )
        for n in names
    ]
    with torch.no_grad():
        model(input_ids=windows, attention_mask=torch.ones_like(windows))
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).numpy() for n, v in rows.items()}


def by_hand(x, wf, wq, act=None):
    xq = x if act is None else fake_quant_activation_np(x.astype(np.float32), act).astype(np.float64)
    ref = x @ wf.astype(np.float64).T
    return float(np.sum((ref - xq @ wq.astype(np.float64).T) ** 2) / np.sum(ref**2))


def test_values_are_the_formula_computed_by_hand():
    passes = [QuantizeWeights(format="int4", block_size=32), QuantizeActivations(format="int8", block_size=32)]
    probe, model, ctx = run_fx(passes[:1], probe_passes=passes)  # Qa from the recipe's quantize_activations
    heldout = ctx.calibration.windows()[1]  # 128 tokens: the probe keeps them all, in order
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    mods = dict(model.named_modules())
    wf = {n: mods[n].weight.detach().numpy().copy() for n in names}
    wq = {n: dequantize_weight(quantize_weight(w, WFMT)) for n, w in wf.items()}
    x = linear_inputs(model, names, heldout)
    for n in names:
        assert probe.table[n]["start"] == pytest.approx(by_hand(x[n], wf[n], wq[n], AFMT), rel=1e-6)

    quantized = copy.deepcopy(model)  # what the graph computes after quantize_weights
    for name, mod in quantized.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(dequantize_weight(quantize_weight(mod.weight.numpy(), WFMT))))
    xq = linear_inputs(quantized, names, heldout)
    down = "model.layers.1.mlp.down_proj"
    expected = by_hand(xq[down], wf[down], wq[down], AFMT)
    assert probe.table[down]["quantize_weights"] == pytest.approx(expected, rel=1e-5)
    assert "quantize_weights" not in probe.table[names[0]]  # its input and weights did not change
    assert "lm_head" not in probe.table  # ignored by the recipe


def test_online_w4a4_records_each_pass_that_moved_the_error():
    recipe = load_recipe(str(BENCH / "mxfp4-w4a4-online.toml"))
    passes = recipe.instantiate()
    fx = passes[: next(i for i, p in enumerate(passes) if "fx" not in p.stages)]
    probe, _, _ = run_fx(fx, probe_passes=passes)
    assert len(probe.table) == 14  # 2 layers x 7 linears
    assert pass_order(probe.table) == ["start", "rotate_inputs", "quantize_weights", "quantize_activations"]
    values = [v for row in probe.table.values() for v in row.values()]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert all(list(row)[:2] == ["start", "rotate_inputs"] for row in probe.table.values())
    text = summary(probe.table)
    assert "| quantize_activations |" in text and "worst sites" in text


def test_repeated_pass_names_are_numbered():
    passes = [
        QuantizeWeights(format="int4", block_size=32),
        QuantizeActivations(format="int8", block_size=32),
        QuantizeActivations(format="int4", block_size=32),
    ]
    probe, _, _ = run_fx(passes)
    assert "quantize_activations#2" in pass_order(probe.table)


@pytest.mark.parametrize("recipe", [str(BENCH / "rotate-hadamard.toml"), "fp"])
def test_probe_is_off_without_a_quantizing_pass(recipe):
    probe = LayerErrorProbe(load_recipe(recipe).instantiate())
    probe.start(SimpleNamespace(stage="fx"), Context(calibration=Windows()))
    assert not probe.active and probe.table == {} and summary(probe.table) == ""


@pytest.mark.parametrize("flag", [[], ["--no-layer-error"]])
def test_report_json_holds_the_table_unless_disabled(flag, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--model",
                "tiny-llama",
                "--recipe",
                "int4-w4a4-rtn",
                "--no-eval",
                "--calib-windows",
                "2",
                "--no-progress",
                "--out",
                str(out),
                *flag,
            ]
        )
        == 0
    )
    table = json.loads((out / "report.json").read_text())["layer_error"]
    md = (out / "report.md").read_text()
    if flag:
        assert table == {} and "Layer error" not in md
    else:
        assert len(table) == 14 and pass_order(table) == ["start", "quantize_weights", "quantize_activations"]
        assert "Layer error" in md


def test_probe_turns_itself_off_when_the_model_cannot_be_measured():
    from qpasses.errors import InputError

    def stats(*args, **kwargs):
        raise InputError("the text holds 3 windows")

    lines = []
    probe = LayerErrorProbe([QuantizeWeights()], log=lines.append)
    graph = SimpleNamespace(stage="fx", fingerprint=lambda: "0", sites=list)
    probe.start(graph, Context(calibration=SimpleNamespace(stats=stats)))
    assert not probe.active and probe.table == {} and "3 windows" in lines[0]


def test_a_low_rank_branch_counts_as_part_of_the_weight():
    """Weight-only, the branch (x L) R is the dense weight Wq + (L R)ᵀ."""
    rng = np.random.default_rng(0)
    x, wf = rng.standard_normal((64, 16)), rng.standard_normal((8, 16)).astype(np.float32)
    wq = (wf + 0.1 * rng.standard_normal(wf.shape)).astype(np.float32)
    left, right = rng.standard_normal((16, 2)) * 0.1, rng.standard_normal((2, 8)) * 0.1
    got = layer_error(x, wf, wq, None, (left, right))
    assert got == pytest.approx(by_hand(x, wf, (wq + (left @ right).T).astype(np.float64)), rel=1e-9)
    assert got != pytest.approx(layer_error(x, wf, wq), rel=1e-3)
