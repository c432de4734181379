"""Every decoder family of qpasses.models.families, end to end in onnxruntime.

For each family x recipe: the run succeeds, every linear the recipe means to quantize is lowered,
ORT perplexity equals stage-A perplexity (1e-4 relative for weight-only recipes, 1% for W4A4), and the
KV-cache graph's steps give the logits of the full graph. The default suite runs RTN on every family
and the composed recipes on three (q/k norms, fused projections, Conv1D with LayerNorm); the rest is
marked slow. docs/families.md is the same matrix as a table (bench/families.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qpasses
from qpasses.evaluate.decoder import Decoder
from qpasses.evaluate.perplexity import ort_logits_fn
from qpasses.models.families import FAMILIES, save_family
from qpasses.runtime.ort import session

RTN, COMPOSED, W4A4 = "int4-w4a16-rtn", "int4-w4a16", "mxfp4-w4a4"
TOLERANCE = {RTN: 1e-4, COMPOSED: 1e-4, W4A4: 1e-2}
COMPOSED_BY_DEFAULT = ("qwen3", "phi3", "gpt2")
TEXT = "The GNU coding standards were written by Richard Stallman and other GNU Project volunteers. " * 60


def cases():
    for family in FAMILIES:
        for recipe in TOLERANCE:
            slow = recipe != RTN and family not in COMPOSED_BY_DEFAULT
            yield pytest.param(family, recipe, id=f"{family}-{recipe}", marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(family, recipe) -> (output folder, the model's linear count), each compiled once."""
    root = tmp_path_factory.mktemp("families")
    text = root / "eval.txt"
    text.write_text(TEXT)
    done = {}

    def get(family, recipe):
        if (family, recipe) not in done:
            linears = save_family(family, root / family)
            out = root / f"{family}-{recipe}"
            qpasses.compile(model=str(root / family), recipe=recipe, out=out, eval_text=text, eval_windows=2,
                            calib_windows=4, threads=1, progress=False, layer_error=False)
            done[family, recipe] = out, linears
        return done[family, recipe]

    return get


@pytest.mark.parametrize("family, recipe", cases())
def test_every_linear_is_lowered_and_ort_equals_stage_a(compiled, family, recipe):
    out, linears = compiled(family, recipe)
    report = json.loads((out / "report.json").read_text())
    lowered = sum(n for p in report["passes"] if p["name"] == "lower_linears"
                  for kind, n in p["rewrites"].items() if not kind.startswith(("gather", "expand")))
    left = report.get("unquantized_sites", [])
    assert lowered + len(left) == linears, (lowered, left)
    assert report["ppl_quant"] == pytest.approx(report["ppl_stage_a"], rel=TOLERANCE[recipe])


@pytest.mark.parametrize("family, recipe", cases())
def test_decoder_steps_equal_the_whole_sequence(compiled, family, recipe):
    """A prefill of 8 tokens from an empty cache, then one token per step, by `qpasses generate`'s decoder,
    against the whole sequence in one run (what perplexity runs)."""
    out, _ = compiled(family, recipe)
    ids = np.random.default_rng(3).integers(3, 259, (1, 12))
    sess = session(out / "model.onnx", threads=1)
    expected = [ort_logits_fn(sess)(torch.from_numpy(ids), torch.ones(1, 12, dtype=torch.int64)).numpy()]
    decoder = Decoder(sess)
    logits, past = decoder.run(ids[0, :8].tolist(), None, 0)
    np.testing.assert_allclose(logits, expected[0][0, 7], atol=1e-4, rtol=1e-4)
    for at in range(8, ids.shape[1]):
        logits, past = decoder.run([int(ids[0, at])], past, at)
        np.testing.assert_allclose(logits, expected[0][0, at], atol=1e-4, rtol=1e-4)
