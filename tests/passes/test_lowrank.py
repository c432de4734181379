"""SRR in optimize_weights on the tiny models: W ≈ Q + L·R with Q on the format's grid, L, R in
fp16 in a branch reading the float input; lowered into the runtime op's L, R inputs (or left as
fp16 standard ops), with onnxruntime computing what the torch program computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fx_helpers import IDS, logits, rel, transform
from onnx_builders import run_ort

from qpasses.compiler import to_stage_b
from qpasses.errors import RecipeError
from qpasses.formats import dequantize_weight
from qpasses.ir.sites import LOWRANK_PREFIX
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.optimize_weights import Settings, Solver
from qpasses.passes.registry import PASSES

SRR = {"block_size": 32, "gptq": True, "rank": 4}


def notes(ctx):
    return ctx.notes.weights


def test_a_zero_branch_changes_nothing(model):
    m, ref = model
    graph, _, _ = transform(m, [])
    for site in graph.sites():
        graph.add_lowrank(site, 3)
    graph.verify()
    assert rel(logits(graph), ref) < 1e-6
    assert graph.lowrank(graph.sites()[0])[0].shape == (graph.sites()[0].shape[1], 3)


def test_srr_lowers_the_error_of_its_quantizer_alone(model):
    m, _ = model
    graph, counts, ctx = transform(m, [("optimize_weights", SRR)])
    _, _, plain = transform(m, [("optimize_weights", {**SRR, "rank": 0})])
    n_sites = len({s.weight_name for s in graph.sites()})
    assert counts["optimize_weights"] == {"srr4+gptq+piso.int4_g32": n_sites}
    for site in graph.sites():
        rec = notes(ctx)[site.name]
        assert rec["rank"] == 4 and 0 <= rec["preserved"] <= 4
        assert np.array_equal(site.weight(), dequantize_weight(ctx.quantized[site.weight_name]))  # Q on the grid
        left, right = graph.lowrank(site)
        for f in (left, right):
            assert np.array_equal(f.astype(np.float16).astype(np.float32), f)  # fp16 values
        assert rec["optimized"] < notes(plain)[site.name]["optimized"]
    PASSES["optimize_weights"](**SRR).ensures(graph, ctx)


def test_the_torch_program_computes_q_plus_lr(model):
    """The branch adds (x L) R to the quantized linear: the logits equal those of a model whose
    weights are the dense Q + (L R)ᵀ (weight-only, so both read the same x). The lm_head, tied to
    the embedding table, keeps its branch."""
    m, _ = model
    graph, _, _ = transform(m, [("optimize_weights", SRR)])
    got = logits(graph)
    tables = {t.weight_name for t in graph.embedding_sites()}
    for site in [s for s in graph.sites() if s.weight_name not in tables]:
        left, right = graph.lowrank(site)
        site.set_weight(site.weight() + (left @ right).T)
        graph.set_lowrank(site, np.zeros_like(left), np.zeros_like(right))
    assert rel(logits(graph), got) < 1e-5


@pytest.mark.parametrize("preserve, k", [("none", 0), ("all", 4)])
def test_qer_and_preserve_only_are_the_ends(preserve, k):
    _, _, ctx = transform(build_tiny_llama(), [("optimize_weights", {**SRR, "preserve": preserve})])
    assert {rec["preserved"] for rec in notes(ctx).values()} == {k}
    assert all(rec["method"].startswith("qer4" if k == 0 else "srr4") for rec in notes(ctx).values())


@pytest.mark.parametrize("target, steps", [
    ("qpasses", [("optimize_weights", SRR)]),
    ("qpasses", [("quantize_activations", {"format": "mxfp4", "block_size": 32}),
                 ("optimize_weights", {"format": "mxfp4", "gptq": True, "rank": 4})]),
    ("matmulnbits", [("optimize_weights", SRR)]),
    ("qdq", [("optimize_weights", {**SRR, "preserve": "spectral"})]),
])
def test_the_branch_lowers_and_onnxruntime_agrees(target, steps):
    graph, _, ctx = transform(build_tiny_llama(), steps)
    expect = logits(graph)
    stage = to_stage_b(graph)
    lower = PASSES["lower_linears"](target=target)
    counts = lower.run(stage, ctx)
    lower.ensures(stage, ctx)
    model = stage.models["logits"]
    n_sites = len(ctx.quantized)  # the tied lm_head and its table are one plan
    factors = [v for v in model.graph.initializers.values()
               if v.name.startswith((LOWRANK_PREFIX, "lowrank_L.")) or ".lowrank_" in v.name]
    used = [v for v in factors if v.uses()]
    shared = len({rec["shares_L_with"][0] for rec in notes(ctx).values()})  # one L per input read
    assert len(used) == n_sites + shared and all(v.const_value.dtype.name == "FLOAT16" for v in used)
    if target == "qpasses":  # fused: the op reads L, R; no MatMul is left for the branch
        assert sum(n for rule, n in counts.items() if "_lr." in rule) == n_sites
    else:
        assert counts["LowRankFactorToFp16"] == 2 * n_sites
    out = run_ort(model, {"input_ids": IDS.numpy(), "attention_mask": np.ones_like(IDS.numpy())})
    assert rel(out, expect) < 1e-5


@pytest.mark.parametrize("settings, match", [
    ({"rank": 4, "hessian": "diag"}, "hessian dense"),
    ({"rank": -1}, "rank must be"),
    ({"rank": 4, "preserve": "some"}, "preserve must be"),
    ({"budget": 0.5}, "per-site cap"),
    ({"rank": 8, "budget": -1.0}, "budget >= 0"),
])
def test_bad_settings_are_recipe_errors(settings, match):
    with pytest.raises(RecipeError, match=match):
        PASSES["optimize_weights"](**settings)


def test_a_bit_budget_spreads_ranks_by_benefit():
    """budget = extra bits per weight: the branches' fp16 values fit in it, ranks come in steps up to
    the cap, siblings share theirs, and more budget never raises the error."""
    budget = {**SRR, "rank": 16, "rank_step": 4}
    errors = []
    for bits in (0.5, 2.0):
        graph, counts, ctx = transform(build_tiny_llama(), [("optimize_weights", {**budget, "budget": bits})])
        alloc = ctx.notes.lowrank_budget
        assert 0 < alloc["spent"] <= bits
        sites = [s for s in graph.sites() if s.name in notes(ctx)]
        stored = sum(16 * (f.size) for s in sites if graph.lowrank(s) for f in graph.lowrank(s)[1:])
        stored += 16 * sum(graph.lowrank(s)[0].size for s in sites if graph.lowrank(s)
                           and notes(ctx)[s.name]["shares_L_with"][0] == s.name)
        assert stored <= bits * sum(int(np.prod(s.shape)) for s in sites)
        for rec in notes(ctx).values():
            assert rec.get("rank", 0) % 4 == 0 and rec.get("rank", 0) <= 16
        ranks = {tuple(rec["shares_L_with"]): rec["rank"] for rec in notes(ctx).values() if "rank" in rec}
        assert all(notes(ctx)[n].get("rank") == r for g, r in ranks.items() for n in g)
        errors.append(sum(rec["optimized"] for rec in notes(ctx).values()))
    assert errors[1] <= errors[0]


def test_a_branch_of_another_shape_is_refused():
    graph, _, _ = transform(build_tiny_llama(), [])
    site = graph.sites()[0]
    graph.add_lowrank(site, 2)
    n, k = site.shape
    with pytest.raises(ValueError, match="the branch holds"):
        graph.set_lowrank(site, np.zeros((k, 3), np.float32), np.zeros((3, n), np.float32))
    assert torch.equal(graph.programs.logits.constants[f"{LOWRANK_PREFIX}{site.weight_name}.L"], torch.zeros(k, 2))


def test_siblings_share_one_l():
    """q/k/v (and gate/up) are solved as one weight: one L, each its own rows of R; and the joint
    solve quantizes each linear as its own solve does (rows are independent for GPTQ and PiSO)."""
    graph, _, ctx = transform(build_tiny_llama(), [("optimize_weights", SRR)])
    _, _, plain = transform(build_tiny_llama(), [("optimize_weights", {**SRR, "rank": 0})])
    groups = {}
    for site in graph.sites():
        groups.setdefault(tuple(notes(ctx)[site.name]["shares_L_with"]), []).append(site)
    assert sorted(len(g) for g in groups.values()).count(3) == 2 and max(map(len, groups)) == 3
    for sites in groups.values():
        left = graph.lowrank(sites[0])[0]
        assert all(np.array_equal(graph.lowrank(s)[0], left) for s in sites)
    # the joint solve quantizes each linear's rows as its own solve would
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64))
    h = torch.from_numpy(x.T @ x)
    w1, w2 = (rng.standard_normal((n, 64)).astype(np.float32) for n in (48, 16))
    solver = Solver(Settings(block_size=32, gptq=True))
    joint = solver.solve(np.concatenate([w1, w2]), h)
    alone = np.concatenate([solver.solve(w, h).codes for w in (w1, w2)])
    np.testing.assert_array_equal(joint.codes, alone)


def test_sibling_branches_fuse_with_the_linears():
    """q/k/v and gate/up with branches fuse into one op: one L, R side by side; the outputs stay bit
    for bit."""
    from qpasses.passes.fuse_linears import FuseLinears

    graph, _, ctx = transform(build_tiny_llama(), [("optimize_weights", SRR)])
    stage = to_stage_b(graph)
    PASSES["lower_linears"](target="qpasses").run(stage, ctx)
    model = stage.models["logits"]
    feeds = {"input_ids": IDS.numpy(), "attention_mask": np.ones_like(IDS.numpy())}
    before = run_ort(model, feeds)
    fuse = FuseLinears()
    counts = fuse.run(stage, ctx)
    fuse.ensures(stage, ctx)
    assert counts == {"fuse.MatMulInt4x3": 2, "fuse.MatMulInt4x2": 2}
    fused = [n for n in model.graph if n.op_type == "MatMulInt4" and n.name.endswith("fused3")]
    left, right = (fused[0].inputs[i].const_value.numpy() for i in (5, 6))
    assert left.shape[1] == right.shape[0] == 4 and right.shape[1] == fused[0].attributes["N"].value
    np.testing.assert_array_equal(run_ort(model, feeds), before)
