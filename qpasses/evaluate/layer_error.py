"""The layer error probe: where the quantization error comes from, site by site, pass by pass.

For every linear site, on held-out calibration tokens (docs/methods.md#layer-error, normalized):

    E = ||X Wfᵀ − Qa(X) Wqᵀ − X L R||²_F / ||X Wfᵀ||²_F

X   the site's float input as the current graph computes it (tap "float": after any online
    rotation, before the activation quantizer), a uniform sample of `tokens` rows of the first
    WINDOWS held-out windows;
Wf  the site's last float weight: the current one, or the copy kept before it was quantized (in a
    mapped file, qpasses.offload, whose pages are given back after each measurement: the probe
    adds no second copy of the weights to memory);
Wq  the current (on-grid) weight once quantized, else Wf through the recipe's quantize_weights
    (or optimize_weights) format for that site, by round to nearest (Wf when the recipe has none);
Qa  the quant_act in front of the linear, else the recipe's quantize_activations format for the
    site (identity when it has none);
L R the site's low-rank branch (FxStage.add_lowrank, SRR), which reads the float X; 0 without one.

`table` is {site: {pass: E}}: "start", then the name of each stage-A pass ("name#2" for a
repeated one) after which E moved by more than 1e-6 relative to the last recorded value.
Products and sums in float64. Inactive (empty table) without a quantizing pass, off stage A, or
when the first measurement fails (e.g. a model whose context is shorter than the windows).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from qpasses.calibration.stats import StatsSpec
from qpasses.errors import QPassError
from qpasses.formats import dequantize_weight, quantize_weight
from qpasses.formats.spec import ActFormat
from qpasses.ir.fx_ops import tap_node
from qpasses.ir.sites import select
from qpasses.numerics.fake_quant import fake_quant_activation
from qpasses.offload import release, to_file

REL_CHANGE = 1e-6
ROWS = 4096  # output channels per product in layer_error
WINDOWS = 2  # held-out windows measured (2 x 512 tokens on SmolLM2: one forward batch per pass)


def layer_error(x, wf: np.ndarray, wq: np.ndarray, act: ActFormat | None = None, branch=None) -> float | None:
    """E for input rows x[T, K], weights [N, K], activation format (None: float) and low-rank
    branch (L [K, r], R [r, N]) or None; None when X Wfᵀ is all zero. Output channels are taken
    ROWS at a time: float64 copies of a 49152-row lm_head would be gigabytes."""
    x = torch.as_tensor(x, dtype=torch.float32).double()
    xq = x if act is None else fake_quant_activation(x.float(), act).double()
    xl = None if branch is None else x @ torch.as_tensor(branch[0]).double()
    num = den = 0.0
    for a in range(0, wf.shape[0], ROWS):
        ref = x @ torch.as_tensor(wf[a:a + ROWS]).double().T
        diff = ref - xq @ torch.as_tensor(wq[a:a + ROWS]).double().T
        if xl is not None:
            diff -= xl @ torch.as_tensor(branch[1][:, a:a + ROWS]).double()
        den += float(ref.square().sum())
        num += float(diff.square().sum())
    return None if den == 0.0 else num / den


class LayerErrorProbe:
    """Measures E for every selected site at `start` and after each pass (`after`)."""

    def __init__(self, passes, tokens: int = 512, log: Callable[[str], None] | None = None):
        first = {}
        for p in passes:
            first.setdefault(p.name, p)
        self.weights = first.get("quantize_weights") or first.get("optimize_weights")
        self.acts = first.get("quantize_activations")
        self.tokens, self.log = tokens, log or (lambda line: None)
        self.table: dict[str, dict[str, float]] = {}
        self.seconds = 0.0  # time spent measuring
        self.active = False
        self._float: dict[str, torch.Tensor] = {}  # weight name -> its float32 W while unquantized, mapped
        self._seen: Counter[str] = Counter()
        self._state = None

    def start(self, graph, ctx) -> None:
        quantizes = self.weights is not None or self.acts is not None
        self.active = quantizes and graph.stage == "fx" and ctx.calibration is not None
        if self.active:
            try:
                self._record(graph, ctx, "start")
            except (QPassError, RuntimeError) as e:  # no calibration text, context < 512, ...: a diagnostic
                self.active, self.table = False, {}
                self.log(f"  layer error probe off: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

    def after(self, graph, ctx, result) -> None:
        self._seen[result.name] += 1
        n = self._seen[result.name]
        if self.active and graph.stage == "fx":
            self._record(graph, ctx, result.name if n == 1 else f"{result.name}#{n}")

    def _record(self, graph, ctx, key: str) -> None:
        state = (graph.fingerprint(), len(ctx.quantized), len(ctx.act_formats))
        if state == self._state:  # nothing E depends on changed
            return
        t = time.perf_counter()
        self._state = state
        errors = self.measure(graph, ctx)
        for site, e in errors.items():
            row = self.table.setdefault(site, {})
            last = next(reversed(row.values()), None)
            if last is None or abs(e - last) > REL_CHANGE * abs(last):
                row[key] = e
        self.seconds += time.perf_counter() - t
        if errors:
            v = list(errors.values())
            self.log(
                f"  layer error after {key}: mean {np.mean(v):.3g}, max {max(v):.3g} over {len(v)} sites "
                f"in {time.perf_counter() - t:.1f} s"
            )

    def measure(self, graph, ctx) -> dict[str, float]:
        """E of every selected site of the graph as it is now (updates the float copies)."""
        sites = [s for s in select(graph.sites(), ctx.ignore) if _logits_node(s) is not None]
        spec = StatsSpec(moments=False, absmax=False, keep_tokens=self.tokens)
        stats = ctx.calibration.stats(graph, sites, spec, heldout=True, tap="float", limit=WINDOWS, keep=False)
        out = {}
        for site in sites:
            w = site.weight()
            if site.weight_name in ctx.quantized:
                kept = self._float.get(site.weight_name)
                wf, wq = (w if kept is None else kept.numpy()), w
            else:
                self._keep(site.weight_name, w)
                wq = wf = w
                if self.weights is not None:
                    wq = dequantize_weight(quantize_weight(wf, self.weights.settings_for(site, ctx).weight_format()))
            branch = graph.lowrank(site) if hasattr(graph, "lowrank") else None
            e = layer_error(stats[site.name].tokens, wf, wq, self._act_format(site, ctx), branch)
            if e is not None:
                out[site.name] = e
            release()  # the mapped pages this site's weights touched
        return out

    def _keep(self, name: str, w: np.ndarray) -> None:
        """A copy of w in a mapped file (replacing the last one): once a pass replaces the weight,
        the graph's old tensor is freed and E reads this copy."""
        self._float[name] = to_file(torch.from_numpy(w))

    def _act_format(self, site, ctx) -> ActFormat | None:
        linear = _logits_node(site)
        q = tap_node(linear, "float")
        if q is not linear:
            return ActFormat(q.args[1], q.args[2])
        return None if self.acts is None else self.acts.settings_for(site, ctx).act_format()


def _logits_node(site):
    return next((n for p, n in getattr(site, "uses", ()) if p == "logits"), None)


def pass_order(table: dict[str, dict[str, float]]) -> list[str]:
    """The recorded pass keys in run order (each site's keys are in order; merged)."""
    order: list[str] = []
    for row in table.values():
        at = -1
        for k in row:
            if k in order:
                at = order.index(k)
            else:
                at += 1
                order.insert(at, k)
    return order


def summary(table: dict[str, dict[str, float]], worst: int = 5) -> str:
    """Markdown: mean and max E over sites after each recorded pass (a site keeps its last
    recorded value), then the `worst` sites after the last pass."""
    if not table:
        return ""
    current: dict[str, float] = {}
    lines = ["| after | sites changed | mean E | max E |", "|---|---|---|---|"]
    for key in pass_order(table):
        changed = {s: row[key] for s, row in table.items() if key in row}
        current.update(changed)
        v = list(current.values())
        lines.append(f"| {key} | {len(changed)} | {np.mean(v):.4g} | {max(v):.4g} |")
    top = sorted(current.items(), key=lambda kv: -kv[1])[:worst]
    lines += ["", f"worst sites at the end: {', '.join(f'{s} {e:.4g}' for s, e in top)}"]
    return "\n".join(lines)
