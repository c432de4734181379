"""Stage-A helpers shared by the pass tests: random calibration windows, running passes on a
captured tiny model, and the relative error of logits."""

from __future__ import annotations

import numpy as np
import torch

from qpasses.calibration.source import CalibrationSource
from qpasses.export.capture import capture
from qpasses.ir.fx_stage import FxStage
from qpasses.passes.base import Context
from qpasses.passes.registry import PASSES

IDS = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1))


class LogitsOnly(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits, the interface of a deployed model.onnx."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class Windows(CalibrationSource):
    """Calibration on random byte windows, no text needed."""

    def __init__(self):
        super().__init__(tokenizer=None, n=4, seed=0, progress=False)
        gen = torch.Generator().manual_seed(2)
        self._windows = (torch.randint(3, 259, (4, 64), generator=gen), torch.randint(3, 259, (2, 64), generator=gen))


def transform(model, steps, decoder=False):
    """The logits program (and the decoder's when asked) after `steps`, with counts and context."""
    graph, ctx = FxStage(capture(model, decoder=decoder)), Context(calibration=Windows())
    counts = {}
    for name, settings in steps:
        counts[name] = PASSES[name](**settings).run(graph, ctx)
        graph.verify()
    return graph, counts, ctx


def logits(graph) -> np.ndarray:
    """The logits program's output on IDS."""
    with torch.no_grad():
        return graph.programs.logits.module()(IDS, torch.ones_like(IDS)).numpy()


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())
