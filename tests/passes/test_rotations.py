"""Rotation passes on tiny-llama (hidden 64) and tiny-llama-96 (hidden 96: Kronecker-factored
Hadamards): function preserved in torch and, after ONNX export, in onnxruntime; the online
rotation nodes survive export; structure found by pattern; clear errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from fx_helpers import IDS, logits, rel, transform

from qpasses.compiler import stage_a, to_stage_b
from qpasses.errors import PreconditionError, RecipeError
from qpasses.ir.fx_flow import head_paths, residual_stream
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.base import Context
from qpasses.passes.registry import PASSES

CANON = [("untie_embeddings", {}), ("fold_norms", {})]
QUAROT = [*CANON, ("rotate_residual", {}), ("rotate_heads", {}), ("rotate_inputs", {})]
TORQ = [*CANON, ("rotate_residual", {"kind": "torq"}), ("rotate_heads", {"kind": "torq"}),
        ("rotate_inputs", {"kind": "torq", "inputs": ["other"]})]
STRATEGIES = {
    "quarot": QUAROT,
    "block32": [*CANON, ("rotate_residual", {"block": 32}), ("rotate_heads", {"block": 32}),
                ("rotate_inputs", {"block": 32, "inputs": ["other"]})],
    "online": [CANON[0], ("rotate_inputs", {"inputs": ["norm", "attention", "other"]})],
    "online-block32": [CANON[0], ("rotate_inputs", {"inputs": ["norm", "attention", "other"], "block": 32, "seed": 3})],
    "torq": TORQ,
    "torq-l2": [(n, {**s, "level1": False} if n.startswith("rotate") else s) for n, s in TORQ],
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rotations_preserve_logits_in_torch(model, strategy):
    m, ref = model
    graph, counts, _ = transform(m, STRATEGIES[strategy])
    assert rel(logits(graph), ref) < 1e-4, counts
    assert all(sum(c.values()) for c in counts.values())


@pytest.mark.parametrize("strategy", ["quarot", "torq", "online-block32"])
def test_rotations_preserve_logits_after_onnx_export(model, strategy, tmp_path):
    m, ref = model
    graph, _, _ = transform(m, STRATEGIES[strategy])
    stage = to_stage_b(graph)
    assert len(stage.sites()) == len(graph.sites())  # the rotation matrices are no linear sites
    onnx_model = stage.models["logits"]
    rotations = [v.name for v in onnx_model.graph.initializers.values() if v.name.startswith("rotations.")]
    users = {n.op_type for v in rotations for n, _ in onnx_model.graph.initializers[v].uses()}
    assert rotations and users <= {"MatMul", "Mul"}  # online rotations are standard ops
    ir.save(onnx_model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"input_ids": IDS.numpy(), "attention_mask": np.ones_like(IDS.numpy())})
    assert rel(out, ref) < 1e-4


def test_decoder_program_follows_the_rotations(model):
    """Prefill through the KV-cache program (past = 0) gives the original logits too."""
    m, ref = model
    graph, _, _ = transform(m, QUAROT, decoder=True)
    layers, kv, hd = m.config.num_hidden_layers, m.config.num_key_value_heads, m.config.head_dim
    past = [(torch.zeros(2, kv, 0, hd), torch.zeros(2, kv, 0, hd)) for _ in range(layers)]
    pos = torch.arange(IDS.shape[1]).repeat(2, 1)
    with torch.no_grad():
        logits, _ = graph.programs.decoder.module()(IDS, torch.ones_like(IDS), pos, past)
    assert rel(logits, ref) < 1e-4


def test_structure_is_found_by_pattern():
    graph = stage_a(build_tiny_llama())
    PASSES["untie_embeddings"]().run(graph, Context())
    PASSES["fold_norms"]().run(graph, Context())
    for ep in graph.programs.programs().values():
        stream = residual_stream(ep)
        assert (len(stream.tables), len(stream.readers), len(stream.writers)) == (1, 2 * 5 + 1, 2 * 2)
        paths = head_paths(ep)
        assert [(len(p.readers), p.head_dim) for p in paths] == [(1, 32), (1, 32)]


def test_torq_records_its_choices():
    _, counts, ctx = transform(build_tiny_llama(), TORQ)
    notes = ctx.notes.rotations
    assert "residual" in notes and any(k.startswith("online.") for k in notes)
    assert counts["rotate_inputs"] == {"rotate.online.other": 2}


def test_rotation_before_folding_norms_names_the_fix():
    graph = stage_a(build_tiny_llama())
    with pytest.raises(PreconditionError, match="run fold_norms first"):
        PASSES["rotate_residual"]().run(graph, Context())


def test_folding_a_tied_lm_head_asks_for_untie():
    graph = stage_a(build_tiny_llama())
    with pytest.raises(PreconditionError, match="untie_embeddings"):
        PASSES["fold_norms"]().run(graph, Context())


def test_online_rotation_of_a_tied_lm_head_asks_for_untie():
    graph = stage_a(build_tiny_llama())
    with pytest.raises(PreconditionError, match="untie_embeddings"):
        PASSES["rotate_inputs"](inputs=["norm"]).run(graph, Context())


def test_unknown_input_class_is_a_recipe_error():
    with pytest.raises(RecipeError, match="inputs must name"):
        PASSES["rotate_inputs"](inputs=["mlp"])
    with pytest.raises(RecipeError, match="kind must be"):
        PASSES["rotate_residual"](kind="spin")
