"""The rotary tables of fuse_attention follow the model's max_position_embeddings (capped by
--max-context): a model whose config allows 9000 positions decodes at position 8500, which a table
of the old fixed 8192 rows refused; rotary scalings that one table cannot hold stay unfused, with
the reason."""

from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from qpasses.compiler import positions
from qpasses.export.capture import capture
from qpasses.export.folder_readme import context_lines
from qpasses.export.onnx_export import to_onnx
from qpasses.ir.cleanup import finalize
from qpasses.ir.onnx_stage import OnnxStage
from qpasses.models.tiny import build_tiny_llama
from qpasses.passes.base import Context, Positions
from qpasses.passes.fuse_attention import FuseAttention, Settings, table_rows

LONG = 9000  # max_position_embeddings of the long-context tiny model, above the old fixed 8192 rows


def session(model: ir.Model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])


def copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def fuse(decoder: ir.Model, ctx: Context, **settings) -> tuple[ir.Model, dict]:
    decoder = copy(decoder)
    counts = FuseAttention(**settings).run(OnnxStage({"decoder": decoder}), ctx)
    finalize(decoder)
    return decoder, counts


@pytest.fixture(scope="module")
def long_model():
    model = build_tiny_llama("tiny-llama")
    model.config.max_position_embeddings = LONG  # default rotary: the frequencies do not depend on it
    return model


@pytest.fixture(scope="module")
def long_decoder(long_model):
    return to_onnx(capture(long_model)).decoder


def steps(step: ort.InferenceSession, ids: torch.Tensor, start: int) -> np.ndarray:
    """Prefill ids[:, :-1] at positions start.., then one step for the last token; its logits."""
    names = [i.name for i in step.get_inputs() if i.name.startswith("past_key_values.")]
    kv = step.get_inputs()[3].shape
    past = {n: np.zeros((ids.shape[0], kv[1], 0, kv[3]), np.float32) for n in names}
    n = ids.shape[1]
    pos = torch.arange(start, start + n).repeat(ids.shape[0], 1)
    for lo, hi in ((0, n - 1), (n - 1, n)):
        feed = {"input_ids": ids[:, lo:hi].numpy(), "attention_mask": np.ones((ids.shape[0], hi), np.int64),
                "position_ids": pos[:, lo:hi].numpy(), **past}
        logits, *present = step.run(None, feed)
        past = dict(zip(names, present))
    return logits[:, -1]


def test_a_decode_step_beyond_8192_positions_matches_torch(long_model, long_decoder):
    ctx = Context(positions=positions(SimpleNamespace(model=long_model), None))
    assert ctx.positions == Positions(model=LONG, cap=None, rope_types=("default",))
    fused, counts = fuse(long_decoder, ctx)
    assert counts == {"fuse.group_query_attention": 2, "past_length.from_mask": 2}
    assert fused.graph.initializers["qpasses.rope.cos"].const_value.shape == (LONG, 16)  # head_dim 32 / 2
    assert ctx.notes.max_context == {"model": LONG, "recipe": None, "cap": None, "rotary_rows": LONG}

    ids = torch.randint(3, 259, (2, 5), generator=torch.Generator().manual_seed(7))
    start = 8500 - (ids.shape[1] - 1)  # the decode step is at position 8500
    with torch.no_grad():
        pos = torch.arange(start, start + ids.shape[1]).repeat(2, 1)
        expected = long_model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos).logits[:, -1]
    got = steps(session(fused), ids, start)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)
    # the exported (unfused) step graph computes its rotary per position: the same logits
    np.testing.assert_allclose(got, steps(session(long_decoder), ids, start), atol=1e-4, rtol=0)

    # the old fixed table, here through the cap: onnxruntime refuses the position
    capped, _ = fuse(long_decoder, Context(positions=Positions(model=LONG, cap=8192)))
    with pytest.raises(Exception, match="out of range|position"):
        steps(session(capped), ids, start)


def test_rows_come_from_the_recipe_the_model_or_the_default_and_the_cap_bounds_them():
    assert table_rows(Settings(), Positions(model=32768)) == 32768
    assert table_rows(Settings(), Positions(model=32768, cap=4096)) == 4096
    assert table_rows(Settings(), Positions(model=2048, cap=4096)) == 2048
    assert table_rows(Settings(), Positions()) == 8192  # no config (an ONNX input): the old default
    assert table_rows(Settings(max_positions=64), Positions(model=32768)) == 64  # an explicit --set wins
    assert table_rows(Settings(max_positions=16384), Positions(model=32768, cap=4096)) == 4096  # and is capped
    from qpasses.errors import RecipeError

    with pytest.raises(RecipeError, match="positive"):
        FuseAttention(max_positions=0)


def test_the_readme_says_how_far_the_decoder_goes_and_why():
    assert context_lines({}) == []  # no tables: nothing to state
    text = "\n".join(context_lines({"model": 32768, "recipe": None, "cap": 4096, "rotary_rows": 4096}))
    assert "decodes up to 4096 positions" in text
    assert "max_position_embeddings (32768), capped by --max-context 4096" in text
    text = "\n".join(context_lines({"model": None, "recipe": None, "cap": None, "rotary_rows": 8192}))
    assert "decodes up to 8192 positions" in text and "is not known" in text
    text = "\n".join(context_lines({"model": 2048, "recipe": None, "cap": 4096, "rotary_rows": 2048}))
    assert "(2048)." in text and "capped" not in text


ROPE = {
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "rope_theta": 1e5},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 16, "long_factor": [2.0] * 16,
                 "original_max_position_embeddings": 512, "rope_theta": 1e5},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e5},
}


def scaled_model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, num_hidden_layers=1, num_key_value_heads=1, head_dim=32, hidden_size=64,
                      intermediate_size=128, num_attention_heads=2, max_position_embeddings=2048,
                      rope_parameters=ROPE[kind])
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind, fused, reason", [
    ("linear", 1, None),  # inv_freq / factor: still one table
    ("yarn", 1, None),  # its attention factor multiplies cos / sin: it goes into the tables
    ("longrope", 0, "rope_scaling 'longrope' changes the rotary frequencies with the position"),  # the config
])
def test_rotary_scalings_fuse_into_the_tables_or_stay_unfused_with_the_reason(kind, fused, reason):
    model = scaled_model(kind)
    ctx = Context(positions=positions(SimpleNamespace(model=model), None))
    assert ctx.positions.rope_types == (kind,)
    decoder = to_onnx(capture(model)).decoder
    fused_decoder, counts = fuse(decoder, ctx, max_positions=64)
    assert counts.get("fuse.group_query_attention", 0) == fused and (fused or not counts)
    if fused:  # the fused decoder decodes as the exported one, at positions up to the table's last row
        ids = torch.randint(3, 259, (2, 6), generator=torch.Generator().manual_seed(8))
        np.testing.assert_allclose(steps(session(fused_decoder), ids, 58), steps(session(decoder), ids, 58),
                                   atol=1e-4, rtol=0)
    if reason:
        [miss] = ctx.notes.misses["fuse_attention"]
        assert reason in miss, miss
        assert ctx.notes.max_context == {}
    else:
        assert "fuse_attention" not in ctx.notes.misses


def test_a_partial_rotary_fuses_with_its_rotary_dimension():
    """Phi-3 with partial_rotary_factor 0.5 rotates the first 8 of 16 channels per head:
    Concat(rope(x[..., :8]), x[..., 8:]) = RotaryEmbedding(x, rotary_embedding_dim = 8)."""
    from qpasses.models.families import build_family

    model, _ = build_family("phi3", partial_rotary_factor=0.5)
    ctx = Context(positions=positions(SimpleNamespace(model=model), None))
    decoder = to_onnx(capture(model)).decoder
    fused, counts = fuse(decoder, ctx, max_positions=64)
    assert counts == {"fuse.group_query_attention": 2, "past_length.from_mask": 2}
    assert {n.attributes["rotary_embedding_dim"].value for n in fused.graph if n.op_type == "RotaryEmbedding"} == {8}
    ids = torch.randint(3, 259, (2, 6), generator=torch.Generator().manual_seed(9))
    np.testing.assert_allclose(steps(session(fused), ids, 58), steps(session(decoder), ids, 58), atol=1e-4, rtol=0)
