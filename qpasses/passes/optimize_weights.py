"""optimize_weights: weights quantized against calibration data: PiSO or grid scales, GPTQ codes
(docs/methods.md#piso, #gptq, #srr-and-qer).

Identity relied on: ‖X Wᵀ − X Ŵᵀ‖²_F = Σ_rows (w − ŵ)ᵀ H (w − ŵ) with H = XᵀX, so every choice
here (a block's scale by PiSO or a grid, GPTQ's error-corrected codes) lowers one layer's output
error; the graph changes only by Ŵ, on the format's grid, with its codes in ctx.quantized exactly
as quantize_weights records them.

    scales   rtn   the format's rule (amax / 7; MXFP4: OCP floor exponent)
             grid  the best of `grid_points` scales in [0.5, 1.1]·amax/7 (the brute-force baseline)
             piso  the exact optimum (numerics.piso); MXFP4: the best E8M0 exponent (grid = piso)
    hessian  dense H, its diagonal, or identity (plain weight MSE: data-free, no calibration)
    gptq     GPTQ with act-order and damping; scales chosen group by group on the error-corrected
             weights (numerics.gptq)
    objective  unquantized: H from the float model's inputs, all measured before any change;
               self: layer-sequential, each linear's H from the model with every earlier linear
               already quantized (the GPTQ objective; "auto" picks it with gptq)
    rank     > 0: SRR (numerics.srr), W ≈ Q + L·R with the method above as the quantizer of the
             residual; `preserve` splits the rank: probe (k* with the quantization error measured
             by RTN), spectral (the paper's one-shot rule), none (QER: reconstruct only), all
             (preserve only). L, R are stored in fp16 in a branch y += (x L) R that reads the
             linear's float input (FxStage.add_lowrank), which lowering fuses into the op.
    budget   > 0: average extra bits per weight (of the pass's linears) for the branches, instead of
             one rank everywhere: `rank` caps each group (linears sharing an input share L and rank),
             and ranks go `rank_step` at a time where they remove the most layer error per bit,
             measured on the float model as the whitened spectrum of the RTN error (the QER
             curve), relative to ‖S W‖².
Linears that read the same tensor (q/k/v, gate/up) share one H (and S). Stage: fx.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from qpasses.calibration.sequential import layer_sequential
from qpasses.calibration.stats import StatsSpec
from qpasses.checkpoint import GroupStore
from qpasses.errors import PreconditionError
from qpasses.formats import dequantize_weight, e8m0_encode, quantize_weight
from qpasses.formats.mxfp4 import block_exponent
from qpasses.formats.weight import QuantizedWeight, block_length
from qpasses.ir.fx_ops import tap_node
from qpasses.ir.sites import check_finite, select
from qpasses.numerics import gptq, piso, srr
from qpasses.passes.base import Pass
from qpasses.passes.quantize_weights import on_grid
from qpasses.passes.weight_format import WeightFormatSettings
from qpasses.profiling import stage

__all__ = ["OptimizeWeights", "solve_weight"]

F64 = torch.float64
ROW_CHUNK = 8192  # rows per PiSO / GPTQ solve (Solver.solve)
PRESERVE = ("probe", "spectral", "none", "all")


@dataclass(frozen=True)
class Settings(WeightFormatSettings):
    """format (int4 | mxfp4, symmetric, floor exponents), block_size: weight_format.py."""

    scales: str = "piso"  # rtn | grid | piso
    gptq: bool = False
    hessian: str = "dense"  # dense | diag | identity
    objective: str = "auto"  # unquantized | self | auto (self with gptq, else unquantized)
    act_order: bool = True
    damp: float = 0.01
    grid_points: int = 100
    windows: int = 32  # calibration windows of 512 tokens for H
    rank: int = 0  # SRR rank budget per linear (0: no low-rank branch)
    preserve: str = "probe"  # probe | spectral | none (QER) | all (preserve-only)
    budget: float = 0.0  # extra bits per weight for L, R (fp16) spread by benefit; 0: `rank` everywhere
    rank_step: int = 4
    budget_windows: int = 8  # calibration windows for the allocation's statistics

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (self.format in ("int4", "mxfp4"), f"format must be int4 or mxfp4, got {self.format!r}"),
            (self.symmetric and self.scale_rule == "floor", "optimize_weights takes symmetric codes and picks "
             "MXFP4 exponents itself: symmetric = true, scale_rule = floor"),
            (self.scales in ("rtn", "grid", "piso"), f"scales must be rtn, grid or piso, got {self.scales!r}"),
            (self.hessian in ("dense", "diag", "identity"),
             f"hessian must be dense, diag or identity, got {self.hessian!r}"),
            (self.objective in ("auto", "unquantized", "self"),
             f"objective must be auto, unquantized or self, got {self.objective!r}"),
            (self.gptq or self.scales != "rtn", "scales = rtn without gptq is plain quantize_weights; use that pass"),
            (not (self.gptq and self.hessian == "identity"), "gptq needs calibration data: hessian dense or diag"),
            (not (self.gptq and self.objective == "unquantized"),
             "gptq corrects errors against the quantized model's inputs: objective self (or auto)"),
            (self.damp >= 0 and self.grid_points >= 2 and self.windows >= 1,
             "damp >= 0, grid_points >= 2, windows >= 1"),
            (self.rank >= 0, f"rank must be >= 0, got {self.rank}"),
            (self.preserve in PRESERVE, f"preserve must be one of {', '.join(PRESERVE)}, got {self.preserve!r}"),
            (not (self.rank and self.hessian != "dense"), "SRR (rank > 0) whitens with the dense H: hessian dense"),
            (self.budget >= 0 and self.rank_step >= 1 and self.budget_windows >= 1,
             "budget >= 0, rank_step >= 1, budget_windows >= 1"),
            (not self.budget or self.rank, "budget spreads ranks up to `rank`: set rank > 0 as the per-site cap"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def sequential(self) -> bool:
        return self.objective == "self" or (self.objective == "auto" and self.gptq)

    def rule(self) -> str:
        fmt = self.weight_format()
        group = "mxfp4" if fmt.kind == "mxfp4" else f"int4_{f'g{fmt.block_size}' if fmt.block_size else 'per_channel'}"
        method = ("gptq+" if self.gptq else "") + ("" if self.scales == "rtn" else self.scales)
        lowrank = f"{'qer' if self.preserve == 'none' else 'srr'}{self.rank}+" if self.rank else ""
        return f"{lowrank}{method.rstrip('+')}.{group}"


class Solver:
    """One site's weight, H -> QuantizedWeight, by the settings' method."""

    def __init__(self, st: Settings):
        self.st, self.fmt = st, st.weight_format()
        self.grid = piso.E2M1 if self.fmt.kind == "mxfp4" else piso.INT4

    def curvature(self, h: torch.Tensor | None) -> torch.Tensor | None:
        if h is None or self.st.hessian == "identity":
            return None
        return h.diagonal().clone() if self.st.hessian == "diag" else h

    def scales_for(self, w: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """Rows w [N, g] of one block, its H block -> the block's scale per row [N]."""
        with stage(f"{self.st.scales} scales"):
            return self._scales_for(w, h)

    def _scales_for(self, w: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        amax = w.abs().amax(1)
        if self.fmt.kind == "mxfp4":
            e0 = torch.from_numpy(block_exponent(amax.float().numpy()).astype(np.int64))
            e = e0 if self.st.scales == "rtn" else piso.optimal_exponents(w, e0, self.curvature(h))[0]
            return torch.ldexp(torch.ones_like(amax), e)
        if self.st.scales == "rtn":
            return torch.where(amax > 0, amax / 7, 1.0)
        if self.st.scales == "grid":
            return piso.grid_scales(w, self.grid, self.curvature(h), self.st.grid_points)[0]
        return piso.optimal_scales(w, self.grid, self.curvature(h))[0]

    def solve(self, w: np.ndarray, h: torch.Tensor | None, row_chunk: int | None = None):
        """float32 W [N, K], H [K, K] (None: identity) -> QuantizedWeight. Rows are solved
        `row_chunk` (default ROW_CHUNK) at a time (every method here treats rows independently):
        the working set of PiSO and GPTQ stays that of a decoder linear even for a 49152-row lm_head."""
        k = w.shape[1]
        group = block_length(self.fmt, k)
        target, parts = np.empty(w.shape, np.float32), []  # chunks land in float32 at once: no float64 copy of W
        chunk = row_chunk or ROW_CHUNK
        for a in range(0, w.shape[0], chunk):
            rows, s = self._rows(torch.from_numpy(w[a:a + chunk]).to(F64), h, group)
            target[a:a + chunk] = rows.float().numpy()
            parts.append(s)
        scales = torch.cat(parts)
        if self.fmt.kind == "mxfp4":
            stored = e8m0_encode(torch.log2(scales).round().long().numpy())
        else:
            stored = scales.float().numpy()
        return quantize_weight(target, self.fmt, stored)

    def _rows(self, target: torch.Tensor, h: torch.Tensor | None, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [n, K] -> (Ŵ or W, the block scales [n, blocks])."""
        if self.st.gptq:  # Ŵ comes out on the grid of its scales; the format re-derives the codes
            with stage("gptq"):
                return gptq.gptq(target, h, group, self.scales_for, self.grid, self.st.damp, self.st.act_order)
        k = target.shape[1]
        cols = [slice(a, min(a + group, k)) for a in range(0, k, group)]
        return target, torch.stack([self.scales_for(target[:, c], None if h is None else h[c, c]) for c in cols], 1)

    def solve_lowrank(self, w: np.ndarray, h: torch.Tensor, whiten) -> tuple:
        """SRR around `solve`: (QuantizedWeight of the residual, (L [K, r], R [r, N]) float32 holding
        fp16 values, the preserved rank k)."""
        held = {}

        def quantize(rest: torch.Tensor) -> torch.Tensor:  # [K, N] -> Q [K, N], by this solver's method
            held["q"] = self.solve(np.ascontiguousarray(rest.T.float().numpy()), h)
            return torch.from_numpy(dequantize_weight(held["q"])).T

        def rtn(rest: torch.Tensor) -> torch.Tensor:
            q = quantize_weight(np.ascontiguousarray(rest.T.float().numpy()), self.fmt)
            return torch.from_numpy(dequantize_weight(q)).T

        k = {"none": 0, "all": self.st.rank}.get(self.st.preserve)
        split = srr.srr(torch.from_numpy(w).T, h, self.st.rank, quantize, k,
                        probe_quantize=rtn if self.st.preserve == "probe" else None, whiten=whiten)
        left, right = (m.to(torch.float16).float() for m in (split.L, split.R))
        if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
            raise ValueError("the low-rank factors overflow fp16; lower the rank or damp the input statistics")
        return held["q"], (left.numpy(), right.numpy()), split.k


def solve_weight(w: np.ndarray, h: torch.Tensor | None, row_chunk: int | None = None,
                 **settings) -> QuantizedWeight:
    """One weight quantized as the pass quantizes a site, outside any graph (the benchmarks' entry
    point): float32 W [N, K], H = XᵀX [K, K] float64 (None: identity); `settings` are the pass's
    keys, those of `--set optimize_weights.*` (e.g. format="int4", block_size=64, scales="piso",
    gptq=True); rows are solved `row_chunk` (default ROW_CHUNK) at a time."""
    return Solver(Settings(**settings)).solve(w, h, row_chunk)


def relative_errors(w: np.ndarray, approximations: list[np.ndarray], h: torch.Tensor | None) -> list[float]:
    """‖X(W − Ŵ)ᵀ‖² / ‖X Wᵀ‖² = tr(D H Dᵀ) / tr(W H Wᵀ) (H = I when None) for each Ŵ, ROW_CHUNK rows
    at a time: reported figures, so float32 products (summed in float64) serve."""
    hf = None if h is None else h.float()

    def energy(m: torch.Tensor) -> float:
        return float((m.square() if hf is None else (m @ hf) * m).sum(dtype=F64))

    num, den = [0.0] * len(approximations), 0.0
    for a in range(0, w.shape[0], ROW_CHUNK):
        wt = torch.from_numpy(w[a:a + ROW_CHUNK])
        den += energy(wt)
        for k, wq in enumerate(approximations):
            num[k] += energy(wt - torch.from_numpy(wq[a:a + ROW_CHUNK]))
    return [n / max(den, 1e-300) for n in num]


class OptimizeWeights(Pass):
    name = "optimize_weights"
    stages = ("fx",)
    plans_linears = True
    Settings = Settings

    def requires(self, graph, ctx):
        if self.settings.hessian != "identity" and ctx.calibration is None:
            raise PreconditionError(f"{self.name} with hessian {self.settings.hessian!r} needs calibration data "
                                    "(or hessian = identity, the data-free weight MSE)")

    def run(self, graph, ctx):
        sites, seen = [], set()
        for site in select(graph.sites(), ctx.ignore):
            if site.weight_name not in ctx.quantized and site.weight_name not in seen:
                seen.add(site.weight_name)
                check_finite(site.weight_name, site.weight())
                sites.append(site)
        self.counts: Counter[str] = Counter()
        self.ranks: dict[str, int] = {}
        if self.settings.hessian == "identity":
            for site in tqdm(sites, desc=self.name, disable=not _progress(ctx)):
                _apply(graph, *self._solve([site], None, ctx)[0], ctx)
        else:
            self._calibrated(graph, ctx, sites)
        return dict(self.counts)

    def site_settings(self, site, ctx) -> Settings:
        """The site's settings with its own rank: the budget's allocation when there is one."""
        st = self.settings_for(site, ctx)
        rank = self.ranks.get(site.name, 0) if st.budget else min(st.rank, *site.shape)
        return dataclasses.replace(st, rank=rank, budget=0.0)

    def _solve(self, sites: list, h: torch.Tensor | None, ctx, whiten=None) -> list[tuple]:
        """(site, QuantizedWeight, its dequantized W, (L, R) or None) for each of `sites`, which read
        one input; their errors vs RTN into the notes. Sites with equal settings are solved as one
        weight [W₁; W₂; …] (rows are independent for every quantizer here, H is shared): GPTQ factors
        H once, and with a low-rank branch they share one L, so the kernel computes x·L once:
        x L [R₁ | R₂ | …]."""
        sts = [self.site_settings(s, ctx) for s in sites]
        if len(sites) > 1 and any(st != sts[0] for st in sts):
            return [solved for site in sites for solved in self._solve([site], h, ctx, whiten)]
        st, ws = sts[0], [s.weight() for s in sites]
        lowrank, note = None, {}
        try:
            if st.rank:
                q, lowrank, k = Solver(st).solve_lowrank(np.concatenate(ws), h, whiten)
                note = {"rank": lowrank[0].shape[1], "preserved": k, "shares_L_with": [s.name for s in sites]}
            else:
                q = Solver(st).solve(ws[0] if len(ws) == 1 else np.concatenate(ws), h)
        except ValueError as e:
            raise PreconditionError(f"{', '.join(s.name for s in sites)}: {e}") from None
        out, row = [], 0
        hn = None if st.hessian == "identity" else h
        for site, w in zip(sites, ws):
            rows = slice(row, row + w.shape[0])
            row = rows.stop
            qs = q if len(sites) == 1 else QuantizedWeight(q.fmt, w.shape, q.codes[rows], q.scales[rows],
                                                            None if q.zero_points is None else q.zero_points[rows])
            lr = None if lowrank is None else (lowrank[0], np.ascontiguousarray(lowrank[1][:, rows]))
            wq, rtn = dequantize_weight(qs), dequantize_weight(quantize_weight(w, st.weight_format()))
            approx = wq if lr is None else wq + (lr[0] @ lr[1]).T
            e_rtn, e_opt = relative_errors(w, [rtn, approx], hn)
            ctx.notes.weights[site.name] = {"method": st.rule(), "rtn": e_rtn, "optimized": e_opt,
                                                               **note}
            self.counts[st.rule()] += 1
            out.append((site, qs, wq, lr))
        return out

    def _calibrated(self, graph, ctx, sites) -> None:
        """H per shared input, layer-sequentially; weights applied at once (self) or at the end."""
        ep = graph.programs.logits
        pos = {n: i for i, n in enumerate(ep.graph.nodes)}
        groups: dict[tuple, list] = {}
        for site in sites:
            node = next((n for p, n in site.uses if p == "logits"), None)
            if node is None:
                raise PreconditionError(f"{site.name} is not in the logits program; {self.name} cannot measure it")
            x = tap_node(node, "float").args[0]  # the float tensor read (q/k/v, gate/up: one)
            groups.setdefault((x, ctx.act_formats.get(site.weight_name)), []).append((site, node))
        ordered = sorted((sorted(g, key=lambda m: pos[m[1]]) for g in groups.values()), key=lambda g: pos[g[0][1]])
        if self.settings.budget:
            self.ranks = self._allocate(graph, ctx, [[s for s, _ in g] for g in ordered])
        for site in sites:  # branches next: layer_sequential runs a fixed graph, its constants live
            rank = self.site_settings(site, ctx).rank
            if rank:
                graph.add_lowrank(site, rank)
        reps = [{g[0][0].name: g[0][1]} for g in ordered]  # one H per group, measured at its first linear
        windows = ctx.calibration.windows()[0][: self.settings.windows]
        spec = StatsSpec(moments=False, absmax=False, gram=True, max_tokens=max(1, windows.numel()))
        later = []
        store = None if ctx.checkpoint is None else GroupStore(ctx.checkpoint, ctx.step, self.name)

        def take(group: list[tuple]) -> None:
            for solved in group:
                if self.settings.sequential:
                    _apply(graph, *solved, ctx)
                else:
                    later.append(solved)

        def step(i, stats):
            h = stats[ordered[i][0][0].name].gram
            whiten = srr.whitening(h) if any(self.site_settings(s, ctx).rank for s, _ in ordered[i]) else None
            solved = self._solve([s for s, _ in ordered[i]], h, ctx, whiten)
            take(solved)
            if store is not None:
                store.save(i, *_pack(solved, ctx))

        resumed = 0
        while store is not None and resumed < len(ordered) and (saved := store.load(resumed)) is not None:
            take(self._unpack([s for s, _ in ordered[resumed]], *saved, ctx))
            resumed += 1
        if resumed:
            ctx.checkpoint.log(f"  {self.name}: resuming after {resumed} of {len(ordered)} groups ({store.folder})")
        layer_sequential(ep, reps, windows, spec, step, progress=_progress(ctx), resume_at=resumed, own_edits=True)
        for solved in later:
            _apply(graph, *solved, ctx)

    def _unpack(self, sites: list, arrays: dict, meta: dict, ctx) -> list[tuple]:
        """A checkpointed group (_pack) -> the (site, QuantizedWeight, Ŵ, (L, R) or None) its solve gave."""
        out = []
        for k, (site, saved) in enumerate(zip(sites, meta["sites"])):
            if saved["name"] != site.name:
                raise PreconditionError(f"checkpoint {ctx.checkpoint.folder} holds {saved['name']} where "
                                        f"{site.name} is expected; delete the folder")
            q = QuantizedWeight(self.site_settings(site, ctx).weight_format(), site.shape, arrays[f"{k}.codes"],
                                arrays[f"{k}.scales"], arrays.get(f"{k}.zero_points"))
            lr = (arrays[f"{k}.L"], arrays[f"{k}.R"]) if f"{k}.L" in arrays else None
            ctx.notes.weights[site.name] = saved["note"]
            self.counts[saved["note"]["method"]] += 1
            out.append((site, q, dequantize_weight(q), lr))
        return out

    def _allocate(self, graph, ctx, groups: list[list]) -> dict[str, int]:
        """Each site's rank under the bit budget (the settings' docstring), one rank per group of
        sites that read one input (they share L), from the float model's inputs: the relative error
        ρ_p(S E) ‖S E‖² / ‖S W‖² of QER on round to nearest, W = [W₁; W₂; …]."""
        st = self.settings
        spec = StatsSpec(moments=False, absmax=False, gram=True, max_tokens=512 * st.budget_windows)
        stats = ctx.calibration.stats(graph, [g[0] for g in groups], spec, tap="float", limit=st.budget_windows)
        errors, costs = [], []
        for group in groups:
            s, _ = srr.whitening(stats[group[0].name].gram)
            w = np.concatenate([site.weight() for site in group])
            e = np.concatenate([site.weight() - dequantize_weight(quantize_weight(
                site.weight(), self.settings_for(site, ctx).weight_format())) for site in group])
            sw, se = (s @ torch.from_numpy(m).to(F64).T for m in (w, e))
            sv = torch.linalg.svdvals(se)
            cap = min(min(self.settings_for(site, ctx).rank for site in group), *w.shape)
            errors.append(srr.tail_energy(sv, cap) * sv.square().sum() / sw.square().sum().clamp_min(1e-300))
            costs.append(16.0 * sum(w.shape))  # one rank: a column of the shared L and a row of R, fp16
        total = sum(int(np.prod(site.shape)) for group in groups for site in group)
        ranks = srr.allocate_ranks(errors, costs, st.budget * total, st.rank_step)
        ctx.notes.lowrank_budget = {
            "bits_per_weight": st.budget, "spent": sum(c * r for c, r in zip(costs, ranks)) / total,
            "ranks": {group[0].name: r for group, r in zip(groups, ranks)}}
        return {site.name: r for group, r in zip(groups, ranks) for site in group}

    def ensures(self, graph, ctx):
        on_grid(graph, ctx)


def _pack(solved: list[tuple], ctx) -> tuple[dict, dict]:
    """A solved group -> (arrays, meta) for the checkpoint: codes, scales, zero points, the branch
    and each site's notes; Ŵ is not stored (it is the dequantized codes)."""
    arrays, sites = {}, []
    for k, (site, q, _, lowrank) in enumerate(solved):
        arrays.update({f"{k}.codes": q.codes, f"{k}.scales": q.scales})
        if q.zero_points is not None:
            arrays[f"{k}.zero_points"] = q.zero_points
        if lowrank is not None:
            arrays.update({f"{k}.L": lowrank[0], f"{k}.R": lowrank[1]})
        sites.append({"name": site.name, "note": ctx.notes.weights[site.name]})
    return arrays, {"sites": sites}


def _apply(graph, site, q, wq, lowrank, ctx) -> None:
    site.set_weight(wq)
    ctx.quantized[site.weight_name] = q
    if lowrank is not None:
        graph.set_lowrank(site, *lowrank)


def _progress(ctx) -> bool:
    return getattr(ctx.calibration, "progress", True)
