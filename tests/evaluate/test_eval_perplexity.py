"""The perplexity protocol: the formula, the token count, and torch vs onnxruntime agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qpasses.errors import InputError
from qpasses.evaluate.perplexity import PplResult, ort_logits_fn, perplexity, program_logits_fn, torch_logits_fn
from qpasses.runtime.ort import ort_session


def test_two_windows_match_the_hand_computed_formula():
    vocab, length = 7, 5
    gen = torch.Generator().manual_seed(1)
    windows = torch.randint(0, vocab, (2, length), generator=gen)
    table = torch.randn(2, length, vocab, generator=gen)  # logits per window, fixed in advance
    calls = []

    def logits_fn(ids, mask):
        row = next(i for i in range(2) if torch.equal(windows[i], ids[0]))
        calls.append((ids.shape, mask.dtype, bool(mask.eq(1).all())))
        return table[row:row + ids.shape[0]]

    result = perplexity(logits_fn, windows, batch_size=1, progress=False)
    logp = table.double().log_softmax(-1).numpy()
    ids = windows.numpy()
    nll = -sum(logp[w, t, ids[w, t + 1]] for w in range(2) for t in range(length - 1))
    assert result.tokens == 2 * (length - 1) and result.windows == 2
    assert result.nll == pytest.approx(nll, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(nll / 8), rel=1e-6)
    assert calls == [((1, length), torch.int64, True)] * 2


def test_token_count_rule_and_uniform_logits():
    """80 x 512 windows score 40,880 tokens; uniform logits give ppl = vocabulary size."""
    windows = torch.zeros(80, 512, dtype=torch.long)
    result = perplexity(lambda ids, mask: torch.zeros(ids.shape[0], ids.shape[1], 8), windows, progress=False)
    assert isinstance(result, PplResult)
    assert (result.tokens, result.windows) == (40_880, 80)
    assert result.ppl == pytest.approx(8.0, rel=1e-7)  # fp32 log-softmax, float64 sum
    assert result.nll == pytest.approx(40_880 * math.log(8), rel=1e-7)
    assert result.seconds >= 0


@pytest.mark.parametrize("shape", [(512,), (0, 512), (3, 1)])
def test_bad_window_shapes(shape):
    with pytest.raises(InputError):
        perplexity(lambda ids, mask: None, torch.zeros(shape, dtype=torch.long), progress=False)


def test_token_ids_beyond_the_vocabulary():
    windows = torch.full((1, 4), 9, dtype=torch.long)
    with pytest.raises(InputError, match="vocabulary"):
        perplexity(lambda ids, mask: torch.zeros(1, 4, 8), windows, progress=False)


def test_torch_and_onnxruntime_agree(deployed):
    windows = torch.randint(3, 259, (5, 96), generator=torch.Generator().manual_seed(2))
    hf = perplexity(torch_logits_fn(deployed.model), windows, batch_size=2, progress=False)
    program = perplexity(torch_logits_fn(deployed.program.module()), windows, batch_size=2, progress=False)
    onnx_path = deployed.folder / "model.onnx"
    for level in ("all", "disable"):
        session = ort_session(onnx_path, threads=1, optimization=level)
        ort = perplexity(ort_logits_fn(session), windows, batch_size=2, progress=False)
        assert ort.tokens == hf.tokens == 5 * 95
        assert ort.ppl == pytest.approx(hf.ppl, rel=1e-4)
    assert program.ppl == pytest.approx(hf.ppl, rel=1e-5)
    assert 50 < hf.ppl < 2000  # a random model over 512 ids: near-uniform, not degenerate


def test_a_program_run_node_by_node_gives_its_module_s_exact_logits(deployed):
    ids = torch.randint(3, 259, (2, 33), generator=torch.Generator().manual_seed(4))
    padded = torch.ones_like(ids)
    padded[1, :5] = 0  # padding goes through program.module()
    for mask in (torch.ones_like(ids), padded):
        expected = torch_logits_fn(deployed.program.module())(ids, mask)
        assert torch.equal(program_logits_fn(deployed.program)(ids, mask), expected)


def test_batch_size_does_not_change_the_result(deployed):
    windows = torch.randint(3, 259, (3, 40), generator=torch.Generator().manual_seed(3))
    fn = torch_logits_fn(deployed.model)
    one, three = (perplexity(fn, windows, batch_size=b, progress=False) for b in (1, 3))
    assert np.isclose(one.nll, three.nll, rtol=1e-6)
