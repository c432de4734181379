"""smooth_inputs: learned channel scales x ↦ x diag(1/s), W ↦ W diag(s) (SmoothRot, docs/methods.md#smoothing-scales).

Identity relied on: (x diag(1/s) R)(W diag(s) R)ᵀ = x Wᵀ; 1/s folds into x's producer (a norm's
γ (and β), up_proj's rows for down_proj, the up half's rows of a fused gate_up_proj, fc1's rows
through a relu; ir.fx_scales), s into the reading weights' columns, before an online rotation R
already in front of them (scale-then-rotate). Which inputs, by pattern, as in rotate_inputs:
`other` (down_proj, the SmoothRot default), `norm` (q/k/v, gate/up). An input whose producer cannot
absorb 1/s (an attention output) is left unscaled and listed in manifest.json (`smoothing.skipped`);
when no input can (GPT-2's and Falcon's GELU MLPs) the pass does not apply, says why in the report
(`not_applied`) and the run goes on; no input of the classes at all is an error, and so is a tied
lm_head whose producer could take the scales.

The scales come from a ladder of policies, each measured by the layer error through the
deployment quantizers (`format`) and R on calibration tokens, and reported on held-out tokens:
    policy    s(alpha, quantile) from the input's per-channel quantile (1 = max) and W's column max
    quantile  search over `quantiles` at that alpha       (search = "quantile" or "joint")
    joint     search over `alphas` x `quantiles`          (search = "joint")
    trained   s = s0 exp(θ) by Adam, box ±log β, zero-mean θ, best held-out step  (train = true)
Searches run on the selected site (the one with the largest policy error) and replay its
(alpha, q) on every site with their own statistics (per_layer = true: each site searches); a
site keeps the previous rung's scales where the replayed ones are worse on calibration tokens,
so every rung is at least as good as the one before it there.
Stage: fx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from qpasses.calibration.stats import StatsSpec
from qpasses.errors import PreconditionError, RecipeError
from qpasses.formats.spec import ActFormat
from qpasses.ir.fx_flow import head_paths, norm_output
from qpasses.ir.fx_ops import tap_node
from qpasses.ir.fx_scales import producer_of, rotation_of
from qpasses.ir.sites import select
from qpasses.numerics import smoothing
from qpasses.passes.base import Pass

CLASSES = ("norm", "other")
SEARCHES = ("none", "quantile", "joint")


@dataclass(frozen=True)
class Settings:
    inputs: tuple[str, ...] = ("other",)
    format: str = "mxfp4"  # quantizers the error is measured with: mxfp4 (W and A) | int4 (per channel / token)
    weight_block: int = 0  # int4 weights: 0 = per output channel
    alpha: float = 0.5
    quantile: float = 1.0  # 1 = the max (SmoothQuant / SmoothRot)
    search: str = "none"  # none | quantile | joint
    per_layer: bool = False
    alphas: tuple[float, ...] = smoothing.AGRID
    quantiles: tuple[float, ...] = smoothing.QGRID
    train: bool = False
    steps: int = 100
    lr: float = 1e-2
    beta: float = 4.0
    batch: int = 512
    tokens: int = 4096  # calibration tokens kept per site for the searches and the training
    heldout_tokens: int = 2048
    seed: int = 0

    def __post_init__(self):
        for name in ("inputs", "alphas", "quantiles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.inputs or set(self.inputs) - set(CLASSES):
            raise ValueError(f"inputs must name some of {', '.join(CLASSES)}; got {list(self.inputs)}")
        if self.format not in ("mxfp4", "int4"):
            raise ValueError(f"format must be mxfp4 or int4, got {self.format!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if not all(0.0 <= a <= 1.0 for a in (self.alpha, *self.alphas)) or not self.alphas:
            raise ValueError("alpha and alphas must lie in [0, 1]")
        if not all(0.0 < q <= 1.0 for q in (self.quantile, *self.quantiles)) or not self.quantiles:
            raise ValueError("quantile and quantiles must lie in (0, 1] (1 = max)")
        if self.steps < 1 or self.batch < 1 or self.beta <= 1.0 or self.tokens < 64 or self.heldout_tokens < 64:
            raise ValueError("steps, batch >= 1, beta > 1, tokens and heldout_tokens >= 64")

    def formats(self) -> tuple[ActFormat, ActFormat]:
        """(activation, weight) quantizers, as fake-quant blocks along K."""
        if self.format == "mxfp4":
            return ActFormat("mxfp4", 32), ActFormat("mxfp4", 32)
        return ActFormat("int4", 0), ActFormat("int4", self.weight_block)

    def needed_quantiles(self) -> tuple[float, ...]:
        qs = {self.quantile, *(self.quantiles if self.search != "none" else ())}
        return tuple(sorted(q for q in qs if q < 1.0))


@dataclass
class Group:
    """Sites reading one input: their producer, the rotation after the scales, the problem."""

    sites: list
    cls: str
    producer: object
    rotation: object
    w: np.ndarray = None  # concatenated unrotated weights [ΣN, K] float64
    stats: object = None
    calib: smoothing.LayerProblem = None
    heldout: smoothing.LayerProblem = None

    @property
    def name(self) -> str:
        return self.sites[0].name

    def a(self, q: float) -> np.ndarray:
        return (self.stats.absmax if q >= 1.0 else self.stats.quantile(q)).double().numpy()

    def scales(self, alpha: float, q: float) -> np.ndarray:
        return smoothing.policy_scales(self.a(q), smoothing.column_absmax(self.w), alpha)


def _better(g: Group, s: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """A replayed (alpha, q) can ruin another site (a channel whose quantile is ~0 gets s ≈ 1e-5,
    and its rare spikes explode): each rung keeps the previous rung's scales where the new ones
    are not better on the calibration tokens."""
    return s if g.calib.error(s) <= g.calib.error(previous) else previous


class SmoothInputs(Pass):
    name = "smooth_inputs"
    stages = ("fx",)
    changes_activations = True
    Settings = Settings

    def run(self, graph, ctx):
        groups, skipped = self._groups(graph, ctx)
        notes = ctx.notes.smoothing
        notes.setdefault("skipped", skipped)
        inputs = " or ".join(self.settings.inputs)
        if not groups and not skipped:
            raise RecipeError(f"smooth_inputs found no linear reading {inputs} inputs")
        if not groups:  # e.g. GELU between fc1 and fc2: the rotation in front stays, unscaled
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            ctx.notes.not_applied[self.name] = (
                f"no producer of the {inputs} inputs can absorb 1/s ({', '.join(skipped[:3])}{more}: not a norm, "
                f"a linear's rows nor a relu of them), so no scales; the linears stay as they were")
            return {}
        self._measure(graph, ctx, groups)
        counts: Counter[str] = Counter()
        for cls in CLASSES:
            members = [g for g in groups if g.cls == cls]
            if members:
                chosen = self._ladder(members, notes, ctx.calibration.progress)
                for g in members:
                    self._apply(graph, g, chosen[g.name])
                    counts[f"smooth.{cls}.{g.producer.kind}"] += 1
        return dict(counts)

    def _groups(self, graph, ctx) -> tuple[list[Group], list[str]]:
        ep = graph.programs.logits
        attention = {r for p in head_paths(ep) for r in p.readers}
        by_input: dict = {}
        for site in select(graph.sites(), ctx.ignore):
            node = next(n for p, n in site.uses if p == "logits")
            by_input.setdefault(node.args[0], []).append((site, node))
        groups, skipped, tied = [], [], graph.programs.tied_names()
        for x, members in by_input.items():
            sites, nodes = [s for s, _ in members], {n for _, n in members}
            x_pre = tap_node(next(iter(nodes)), "unrotated").args[0]
            cls = "attention" if nodes & attention else "norm" if norm_output(x_pre) else "other"
            if cls not in self.settings.inputs:
                continue
            rotated = x.target is torch.ops.qpasses.rotate.default
            producer = producer_of(ep, x_pre, {x} if rotated else nodes)
            if producer is None:  # left unscaled (a tied lm_head too: its weight is not changed)
                skipped.append(sites[0].name)
                continue
            if tied & {s.weight_name for s in sites}:
                raise PreconditionError(f"{sites[0].name} shares its weight with an embedding table; run "
                                        f"untie_embeddings first or ignore it")
            groups.append(Group(sites, cls, producer, rotation_of(ep, x) if rotated else None))
        return groups, skipped

    def _measure(self, graph, ctx, groups: list[Group]) -> None:
        st = self.settings
        reps = [g.sites[0] for g in groups]
        spec = StatsSpec(moments=False, quantiles=st.needed_quantiles(), keep_tokens=st.tokens, seed=st.seed)
        calib = ctx.calibration.stats(graph, reps, spec, tap="unrotated")
        held = ctx.calibration.stats(graph, reps, StatsSpec(moments=False, absmax=False, keep_tokens=st.heldout_tokens,
                                                            seed=st.seed), heldout=True, tap="unrotated")
        act, weight = st.formats()
        for g in groups:
            w = np.concatenate([s.weight() for s in g.sites]).astype(np.float64)
            g.w = w if g.rotation is None else w @ g.rotation.matrix().T
            g.stats = calib[g.name]
            g.calib = smoothing.LayerProblem(g.stats.tokens, g.w, g.rotation, act, weight)
            g.heldout = smoothing.LayerProblem(held[g.name].tokens, g.w, g.rotation, act, weight)

    def _ladder(self, groups: list[Group], notes: dict, progress: bool) -> dict[str, np.ndarray]:
        """The scales of every group, level by level; held-out errors of each level in notes."""
        st = self.settings
        levels = {"none": {g.name: np.ones(g.w.shape[1]) for g in groups},
                  "policy": {g.name: g.scales(st.alpha, st.quantile) for g in groups}}
        pick = max(groups, key=lambda g: g.calib.error(levels["policy"][g.name]))
        info = notes.setdefault("classes", {})[groups[0].cls] = {"selected": pick.name}
        searches = {"quantile": ([st.alpha], st.quantiles), "joint": (st.alphas, st.quantiles)}
        for level in ("quantile", "joint")[: SEARCHES.index(st.search)]:
            alphas, qs = searches[level]
            chosen = {}
            for g in groups if st.per_layer else [pick]:
                table = smoothing.grid_search(g.calib, {q: g.a(q) for q in qs}, smoothing.column_absmax(g.w),
                                              alphas, qs)
                chosen[g.name] = table[0][:2]
                if g is pick:
                    info[level] = {"alpha": table[0][0], "quantile": table[0][1], "table": table}
            prev = levels[list(levels)[-1]]
            levels[level] = {g.name: _better(g, g.scales(*chosen.get(g.name, chosen[pick.name])), prev[g.name])
                             for g in groups}
        if st.train:
            levels["trained"] = self._train(groups, levels[list(levels)[-1]], info, progress)
        final = list(levels)[-1]
        sites = notes.setdefault("sites", {})
        for g in groups:
            errors = {level: g.heldout.error(s[g.name]) for level, s in levels.items()}
            s = levels[final][g.name]
            sites[g.name] = {"producer": g.producer.kind, "rotation": g.rotation is not None, "heldout_error": errors,
                             "scale_range": [float(s.min()), float(s.max())]}
        info["level"] = final
        return levels[final]

    def _train(self, groups: list[Group], start: dict, info: dict, progress: bool) -> dict[str, np.ndarray]:
        st = self.settings
        cfg = smoothing.TrainConfig(st.steps, st.lr, st.beta, st.batch, seed=st.seed)
        bar = tqdm(total=st.steps * len(groups), desc="train scales", disable=not progress)
        out, summary = {}, {}
        for g in groups:
            def report(step, loss, heldout, name=g.name):
                bar.update(cfg.every if step % cfg.every == 0 else step % cfg.every)
                bar.set_postfix_str(f"{name} loss {loss:.4g} held-out {heldout:.4g}")

            out[g.name], summary[g.name] = smoothing.train_scales(g.calib, g.heldout, start[g.name], cfg, report)
        bar.close()
        info["training"] = {name: {k: v for k, v in s.items() if k != "history"} for name, s in summary.items()}
        return out

    def _apply(self, graph, g: Group, s: np.ndarray) -> None:
        """1/s into the producer, s into the readers' columns (then R again where one follows)."""
        p = g.producer
        programs = graph.programs
        rows, inv = slice(*p.rows) if p.rows else slice(None), 1.0 / s
        for key, scale in ((p.parameter, inv if p.kind == "norm" else inv[:, None]), (p.bias, inv)):
            if key is not None:
                value = programs.parameter(programs.fqn(key)).detach().double().numpy()
                value[rows] *= scale
                graph.set_parameter(programs.fqn(key), value.astype(np.float32))
        w = g.w * s
        row = 0
        for site in g.sites:
            n = site.shape[0]
            part = w[row:row + n]
            site.set_weight(part.astype(np.float32) if g.rotation is None else g.rotation.fold_into_inputs(part))
            row += n
