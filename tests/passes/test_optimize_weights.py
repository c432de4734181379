"""optimize_weights on the tiny models: every method puts the weights on the format's grid with
their codes recorded, lowers the layer error it optimizes below round to nearest, and refuses
bad settings clearly; the chosen scales and codes pack bit-exactly into every lowered form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fx_helpers import transform

from qpasses.compiler import to_stage_b
from qpasses.errors import InputError, PreconditionError, RecipeError
from qpasses.formats import dequantize_weight
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.base import Context
from qpasses.passes.registry import PASSES

CASES = {
    "int4-grid-mse": {"block_size": 32, "scales": "grid", "hessian": "identity"},
    "int4-piso-diag": {"block_size": 32, "hessian": "diag"},
    "int4-piso": {"block_size": 32},
    "int4-gptq": {"block_size": 32, "scales": "rtn", "gptq": True},
    "int4-piso-gptq": {"block_size": 32, "gptq": True},
    "int4-per-channel-piso-gptq": {"block_size": 0, "gptq": True},
    "mxfp4-mse": {"format": "mxfp4", "scales": "grid", "hessian": "identity"},
    "mxfp4-piso": {"format": "mxfp4"},
    "mxfp4-piso-gptq": {"format": "mxfp4", "gptq": True},
}


def errors(ctx):
    notes = ctx.notes.weights
    return np.array([v["rtn"] for v in notes.values()]), np.array([v["optimized"] for v in notes.values()])


@pytest.mark.parametrize("case", CASES)
def test_weights_land_on_the_grid_with_a_lower_error_than_rtn(model, case):
    m, _ = model
    settings = CASES[case]
    graph, counts, ctx = transform(m, [("optimize_weights", settings)])
    sites = graph.sites()
    assert sum(counts["optimize_weights"].values()) == len({s.weight_name for s in sites})
    for site in sites:
        q = ctx.quantized[site.weight_name]
        assert q.fmt.kind == settings.get("format", "int4")
        assert np.array_equal(site.weight(), dequantize_weight(q))
    PASSES["optimize_weights"](**settings).ensures(graph, ctx)
    rtn, opt = errors(ctx)
    if not settings.get("gptq") and settings.get("hessian") != "dense" and "hessian" in settings:
        assert (opt <= rtn * (1 + 1e-6)).all()  # separable objective: exact per block, so never worse
    assert opt.mean() < rtn.mean()


def test_self_objective_measures_each_linear_after_the_earlier_ones_are_quantized(model):
    m, _ = model
    _, _, float_ctx = transform(m, [("optimize_weights", {"block_size": 32, "objective": "unquantized"})])
    _, _, self_ctx = transform(m, [("optimize_weights", {"block_size": 32, "objective": "self"})])
    first = next(iter(float_ctx.notes.weights))
    assert float_ctx.notes.weights[first] == self_ctx.notes.weights[first]  # layer 0 sees the same input
    assert float_ctx.notes.weights != self_ctx.notes.weights


def test_quantized_activations_are_what_gptq_sees(model):
    m, _ = model
    steps = [("quantize_activations", {"format": "int8", "block_size": 32}),
             ("optimize_weights", {"format": "mxfp4", "gptq": True})]
    graph, counts, ctx = transform(m, steps)
    assert counts["optimize_weights"] == {"gptq+piso.mxfp4": len({s.weight_name for s in graph.sites()})}
    rtn, opt = errors(ctx)
    assert opt.mean() < rtn.mean()


@pytest.mark.parametrize("settings, match", [
    ({"gptq": True, "hessian": "identity"}, "needs calibration data"),
    ({"gptq": True, "objective": "unquantized"}, "objective self"),
    ({"scales": "rtn"}, "quantize_weights"),
    ({"format": "int8"}, "int4 or mxfp4"),
    ({"block_size": 48}, "block_size"),
    ({"hessian": "full"}, "dense, diag or identity"),
    ({"symmetric": False}, "symmetric = true"),
    ({"format": "mxfp4", "scale_rule": "even"}, "scale_rule = floor"),
])
def test_bad_settings_are_recipe_errors(settings, match):
    with pytest.raises(RecipeError, match=match):
        PASSES["optimize_weights"](**settings)


def test_calibration_is_required_unless_data_free(model):
    m, _ = model
    graph, _, _ = transform(m, [])
    with pytest.raises(PreconditionError, match="needs calibration"):
        PASSES["optimize_weights"]().requires(graph, Context())
    PASSES["optimize_weights"](hessian="identity", scales="grid").requires(graph, Context())


def test_nan_weights_are_named(model):
    m, _ = model
    graph, _, ctx = transform(m, [])
    site = graph.sites()[0]
    w = site.weight()
    w[0, 0] = np.nan
    site.set_weight(w)
    with pytest.raises(InputError, match=site.weight_name):
        PASSES["optimize_weights"]().run(graph, ctx)


@pytest.mark.parametrize("acts", [False, True])
def test_linears_reading_one_tensor_share_one_hessian(model, monkeypatch, acts):
    from qpasses.passes import optimize_weights

    seen = []
    real = optimize_weights.layer_sequential
    monkeypatch.setattr(optimize_weights, "layer_sequential", lambda ep, groups, *a, **k: (seen.extend(groups),
                                                                                          real(ep, groups, *a, **k)))
    m, _ = model
    steps = [("quantize_activations", {"format": "int8", "block_size": 32})] if acts else []
    transform(m, [*steps, ("optimize_weights", {"block_size": 32})])
    assert len(seen) == 4 * m.config.num_hidden_layers + 1  # q/k/v, o, gate/up, down; lm_head


@pytest.mark.parametrize("settings, target", [
    ({"block_size": 32, "gptq": True}, "qpasses"),
    ({"block_size": 32}, "matmulnbits"),
    ({"block_size": 0, "gptq": True}, "qdq"),
    ({"format": "mxfp4", "gptq": True}, "qpasses"),
    ({"format": "mxfp4"}, "matmulnbits"),
])
def test_chosen_scales_and_codes_pack_bit_exactly(settings, target):
    graph, _, ctx = transform(build_tiny_llama(), [("optimize_weights", settings)])
    stage = to_stage_b(graph)
    lower = PASSES["lower_linears"](target=target)
    counts = lower.run(stage, ctx)
    assert sum(counts.values()) >= len(ctx.quantized)  # + the table tied to lm_head
    lower.ensures(stage, ctx)  # every stored byte decodes to the recorded codes and scales


@pytest.mark.parametrize("settings", [dict(format="int4", block_size=32, scales="piso", gptq=True),
                                      dict(format="mxfp4", scales="piso", gptq=False)])
def test_rows_solved_in_chunks_give_the_same_codes(settings, monkeypatch):
    """Solver.solve splits tall weights (a 49152-row lm_head) into row chunks; rows are independent."""
    import torch

    from qpasses.passes import optimize_weights as ow

    rng = np.random.default_rng(3)
    w = rng.standard_normal((50, 64)).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((256, 64)))
    solver = ow.Solver(ow.Settings(**settings))
    whole = solver.solve(w, x.T @ x)
    monkeypatch.setattr(ow, "ROW_CHUNK", 16)
    chunked = solver.solve(w, x.T @ x)
    assert np.array_equal(whole.codes, chunked.codes) and np.array_equal(whole.scales, chunked.scales)
    public = ow.solve_weight(w, x.T @ x, row_chunk=8, **settings)  # the benchmarks' entry point
    assert np.array_equal(whole.codes, public.codes) and np.array_equal(whole.scales, public.scales)


def test_relative_errors_are_the_layer_output_errors():
    # ‖X(W − Ŵ)ᵀ‖² / ‖X Wᵀ‖², from float32 products, against the float64 definition on X itself
    from qpasses.passes.optimize_weights import relative_errors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 48)) * rng.uniform(0.1, 5, 48)
    w = rng.standard_normal((40, 48)).astype(np.float32)
    approx = [w + 0.01 * rng.standard_normal(w.shape).astype(np.float32), np.zeros_like(w)]
    want = [np.square(x @ (w - a).T.astype(np.float64)).sum() / np.square(x @ w.T.astype(np.float64)).sum()
            for a in approx]
    got = relative_errors(w, approx, torch.from_numpy(x.T @ x))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[1] == pytest.approx(1.0, rel=1e-6)
    plain = relative_errors(w, approx, None)  # H = I: weight MSE
    np.testing.assert_allclose(plain[0], np.square(w - approx[0]).sum() / np.square(w).sum(), rtol=1e-5)
