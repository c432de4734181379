"""What passes ask for calibration: windows of the calibration text, and statistics of the
inputs of chosen sites on the graph as it is now, cached by the graph's fingerprint.

    stats = ctx.calibration.stats(graph, sites, StatsSpec(quantiles=(0.999,)))

On stage A the statistics come from the torch logits program (collect_fx), on stage B from
onnxruntime on the logits graph (collect_onnx). Every edit changes the graph's fingerprint, so
a pass never sees statistics gathered before a transform; the manager also drops stale entries
after any pass that declares `changes_activations`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qpasses.calibration.cache import StatsCache, windows_digest
from qpasses.calibration.stats import SiteStats, StatsSpec
from qpasses.domain import DOMAIN
from qpasses.errors import PreconditionError

TAPS = ("input", "float", "unrotated")


class CalibrationSource:
    def __init__(self, tokenizer, n: int, seed: int, text: Path | None = None, progress: bool = True):
        self.tokenizer, self.n, self.seed, self.text, self.progress = tokenizer, n, seed, text, progress
        self.cache = StatsCache()
        self._windows = None

    def windows(self):
        """(calibration [n, 512], held-out [16, 512]) token windows, built on first use."""
        if self._windows is None:
            from qpasses.data.texts import debian_text
            from qpasses.data.windows import calibration_windows, tokenize_text

            ids = tokenize_text(self.tokenizer, self.text or debian_text("calib"))
            self._windows = calibration_windows(ids, self.n, seed=self.seed)
        return self._windows

    def stats(self, graph, sites, spec: StatsSpec, heldout: bool = False, tap: str = "input",
              limit: int | None = None, keep: bool = True) -> dict[str, SiteStats]:
        """Statistics of each site's input (keyed by site name) on `graph` as it is now, over the
        calibration windows (or the held-out ones; only the first `limit` windows when given).
        keep=False: not cached (a one-off measurement whose token samples need not stay in memory).

        tap (stage A only) says which tensor in front of the linear is measured:
            input      what the linear reads
            float      before the activation quantizer in front of it, if any
            unrotated  before that quantizer and an online rotation in front of it, if any
        """
        if tap not in TAPS:
            raise ValueError(f"tap must be one of {', '.join(TAPS)}, got {tap!r}")
        if tap != "input" and graph.stage != "fx":
            raise PreconditionError(f"tap {tap!r} is measured on stage A (fx) only")
        windows = self.windows()[1 if heldout else 0][:limit]
        key = (f"{graph.fingerprint()}:{tap}", windows_digest(windows), spec)
        names = [s.name for s in sites]
        hit = self.cache.get(*key, sites=names)
        if hit is not None:
            return hit
        stats = self._collect(graph, sites, windows, spec, tap)
        if keep:
            self.cache.put(*key, stats)
        return stats

    def invalidate(self) -> None:
        self.cache.invalidate()

    def _collect(self, graph, sites, windows, spec, tap) -> dict[str, SiteStats]:
        if graph.stage == "fx":
            from qpasses.calibration.collect_fx import collect_fx
            from qpasses.ir.fx_ops import tap_node

            nodes = {s.name: tap_node(next(node for prog, node in s.uses if prog == "logits"), tap) for s in sites}
            return collect_fx(graph.programs.logits, nodes, windows, spec, progress=self.progress)
        import onnx_ir as ir

        from qpasses.calibration.collect_onnx import collect_onnx

        model = graph.models["logits"]
        if any(n.domain == DOMAIN for n in model.graph):
            raise PreconditionError("calibration on an ONNX graph needs it runnable: lower the qpasses nodes first")
        inputs = {s.name: next(u.node.inputs[0].name for u in s.uses if u.graph is model.graph) for s in sites}
        with tempfile.TemporaryDirectory(prefix="qpasses-calib-") as tmp:
            path = Path(tmp) / "model.onnx"
            ir.save(model, path, external_data="model.onnx.data")
            return collect_onnx(path, inputs, windows, spec, progress=self.progress)
