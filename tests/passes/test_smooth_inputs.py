"""smooth_inputs on tiny-llama (hidden 64) and tiny-llama-96: the folded scales keep the logits in
torch, in the KV-cache program and in onnxruntime, alone and composed with rotations; the ladder of
policies is recorded; clear errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from fx_helpers import IDS, logits, rel, transform

from qpasses.compiler import to_stage_b
from qpasses.errors import PreconditionError, RecipeError
from qpasses.ir.fx_scales import producer_of
from qpasses.models.families import build_family
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.registry import PASSES

UNTIE, FOLD = ("untie_embeddings", {}), ("fold_norms", {})
ONLINE = ("rotate_inputs", {"inputs": ["norm", "attention", "other"]})
QUAROT = [UNTIE, FOLD, ("rotate_residual", {}), ("rotate_heads", {}), ("rotate_inputs", {})]
TRAIN = {"train": True, "steps": 20, "batch": 64}
CASES = {
    "down_proj": [("smooth_inputs", {})],
    "norms": [UNTIE, FOLD, ("smooth_inputs", {"inputs": ["norm", "other"], "search": "joint"})],
    "online": [UNTIE, ONLINE, ("smooth_inputs", {"inputs": ["norm", "other"], "search": "quantile", **TRAIN})],
    "quarot-int4": [*QUAROT, ("smooth_inputs", {"format": "int4", "search": "joint", "per_layer": True, **TRAIN})],
}


@pytest.mark.parametrize("case", CASES)
def test_scales_preserve_logits_in_torch(model, case):
    m, ref = model
    graph, counts, _ = transform(m, CASES[case])
    assert rel(logits(graph), ref) < 1e-4, counts
    layers = m.config.num_hidden_layers
    smoothed = counts["smooth_inputs"]
    assert smoothed["smooth.other.rows"] == layers  # every down_proj, 1/s in up_proj's rows
    assert smoothed.get("smooth.norm.norm", 0) == (2 * layers + 1 if "norm" in str(CASES[case][-1]) else 0)


@pytest.mark.parametrize("case", ["online"])
def test_scales_preserve_logits_in_onnxruntime_and_the_decoder(model, case, tmp_path):
    m, ref = model
    graph, _, _ = transform(m, CASES[case], decoder=True)
    layers, kv, hd = m.config.num_hidden_layers, m.config.num_key_value_heads, m.config.head_dim
    past = [(torch.zeros(2, kv, 0, hd), torch.zeros(2, kv, 0, hd)) for _ in range(layers)]
    with torch.no_grad():
        logits, _ = graph.programs.decoder.module()(IDS, torch.ones_like(IDS), torch.arange(24).repeat(2, 1), past)
    assert rel(logits, ref) < 1e-4
    ir.save(to_stage_b(graph).models["logits"], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input_ids": IDS.numpy(), "attention_mask": np.ones_like(IDS.numpy())})
    assert rel(out, ref) < 1e-4


def test_the_ladder_of_policies_is_recorded():
    _, _, ctx = transform(build_tiny_llama(), CASES["online"])
    notes = ctx.notes.smoothing
    other = notes["classes"]["other"]
    assert other["level"] == "trained" and other["selected"].endswith("down_proj")
    assert {r[0] for r in other["quantile"]["table"]} == {0.5}  # quantile-only: alpha fixed
    for site, rec in notes["sites"].items():
        errors = rec["heldout_error"]
        assert list(errors) == ["none", "policy", "quantile", "trained"]
        assert errors["trained"] <= errors["quantile"] + 1e-12, site  # training keeps its start when it cannot help
        assert rec["rotation"] and rec["producer"] in ("norm", "rows")


def test_attention_outputs_have_no_producer_here():
    _, _, ctx = transform(build_tiny_llama(), [UNTIE, ONLINE, ("smooth_inputs", {})])
    assert all(s.endswith("o_proj") for s in ctx.notes.smoothing["skipped"])


def test_errors_name_the_problem():
    with pytest.raises(RecipeError, match="inputs must name"):
        PASSES["smooth_inputs"](inputs=["attention"])
    with pytest.raises(RecipeError, match="search must be"):
        PASSES["smooth_inputs"](search="grid")
    with pytest.raises(RecipeError, match="quantile"):
        PASSES["smooth_inputs"](quantile=0.0)
    with pytest.raises(PreconditionError, match="untie_embeddings"):
        transform(build_tiny_llama(), [FOLD, ("smooth_inputs", {"inputs": ["norm"]})])


@pytest.mark.parametrize("family", ["phi3", "opt"])
def test_fused_gate_up_and_relu_producers_keep_logits(family):
    """Phi-3's down_proj reads up ⊙ silu(gate) from chunks of one gate_up_proj: 1/s goes into the up
    half's rows only; OPT's fc2 reads relu(fc1): 1/s goes into fc1's rows and bias. The tied OPT
    lm_head reads a LayerNorm, a norm input as the tied Llama's: not smoothed, no error."""
    m, _ = build_family(family)
    with torch.no_grad():
        ref = m(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits.numpy()
    graph, counts, ctx = transform(m, [("rotate_inputs", {}), ("smooth_inputs", {})])
    assert rel(logits(graph), ref) < 1e-5, counts
    assert counts["smooth_inputs"] == {"smooth.other.rows": 2}
    sites = ctx.notes.smoothing["sites"]
    assert {s.rsplit(".", 1)[1] for s in sites} == {"down_proj" if family == "phi3" else "fc2"}
    assert not any(s.startswith("lm_head") for s in ctx.notes.smoothing["skipped"])


@pytest.mark.parametrize("family", ["gpt2", "falcon"])
def test_a_gelu_mlp_leaves_nothing_to_smooth_and_the_pass_says_why(family):
    """gelu(z)/s ≠ gelu(z/s): fc2 / c_proj have no producer, attention outputs neither; the pass does
    not apply (the manager lets it go on with a warning) and changes nothing."""
    m, _ = build_family(family)
    with torch.no_grad():
        ref = m(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits.numpy()
    graph, counts, ctx = transform(m, [("rotate_inputs", {}), ("smooth_inputs", {})])
    assert counts["smooth_inputs"] == {}
    assert "can absorb 1/s" in ctx.notes.not_applied["smooth_inputs"]
    assert len(ctx.notes.smoothing["skipped"]) == 4  # attention output and MLP output, 2 layers
    assert rel(logits(graph), ref) < 1e-5


class _FusedPair(torch.nn.Module):
    """y = down(relu(h[:, :8]) ⊙ h[:, 8:]) with h = fused(x); `overlap` also returns h[:, 4:12]."""

    def __init__(self, overlap: bool):
        super().__init__()
        self.fused, self.down, self.overlap = torch.nn.Linear(8, 16), torch.nn.Linear(8, 8), overlap

    def forward(self, x):
        h = self.fused(x)
        y = self.down(torch.relu(h[:, :8]) * h[:, 8:])
        return (y, h[:, 4:12]) if self.overlap else y


def test_a_slice_of_a_fused_linear_takes_its_rows_only():
    torch.manual_seed(0)
    m, x = _FusedPair(overlap=False), torch.randn(5, 8)
    ep = torch.export.export(m, (x,))
    down = [n for n in ep.graph.nodes if n.target is torch.ops.aten.linear.default][-1]
    p = producer_of(ep, down.args[0], {down})
    assert (p.kind, p.parameter, p.bias, p.rows) == ("rows", "fused.weight", "fused.bias", (8, 16))
    s = torch.rand(8, dtype=torch.float64) + 0.5
    ref = m(x).double()
    with torch.no_grad():
        m.fused.weight[8:] /= s[:, None].float()
        m.fused.bias[8:] /= s.float()
        m.down.weight *= s.float()
    assert rel(m(x).double().detach(), ref.detach()) < 1e-6
    over = torch.export.export(_FusedPair(overlap=True), (x,))
    down = [n for n in over.graph.nodes if n.target is torch.ops.aten.linear.default][-1]
    assert producer_of(over, down.args[0], {down}) is None  # h[:, 4:12] reads rows the scales would change
