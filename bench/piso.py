"""PiSO's exact sweep against the brute-force dense scale grid, on SmolLM2's own weights and
input Hessians: the time each takes and the objective each reaches, side by side in one run.

    .venv/bin/python bench/piso.py [--layers 15] [--group 64] [--windows 8] [--threads 1]

For each linear of the chosen layers, H = XᵀX of its input over `windows` calibration windows of
512 tokens; per block of `group` columns the objective is the layer output error
‖X(w − ŵ)‖² (docs/methods.md#piso, dense H block, INT4 symmetric). The grid tries n scales in
[lo, hi]·amax/7 (default [0.1, 1.2]) for growing n; the table gives, summed over all blocks, the grid's output
error relative to PiSO's and both times, and the smallest n at which the grid comes within 0.1% and
0.01% of PiSO. Writes the table to bench/results/<model>/piso.md (--out names another file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from qpasses.calibration.collect_fx import collect_fx
from qpasses.calibration.source import CalibrationSource
from qpasses.calibration.stats import StatsSpec
from qpasses.export.capture import capture
from qpasses.ir.fx_stage import FxStage
from qpasses.load import load_model
from qpasses.numerics import piso

POINTS = (25, 50, 100, 200, 400, 800, 1600)


def blocks(w: torch.Tensor, h: torch.Tensor, group: int):
    for a in range(0, w.shape[1], group):
        yield w[:, a:a + group], h[a:a + group, a:a + group]


def timed(fn, parts):
    t = time.perf_counter()
    total = sum(float(fn(w, h)[1].sum()) for w, h in parts)
    return total, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, nargs="+", default=[15])
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lo", type=float, default=0.1, help="grid from lo·amax/7 (default %(default)s)")
    ap.add_argument("--hi", type=float, default=1.2, help="grid to hi·amax/7 (default %(default)s)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    graph = FxStage(capture(loaded.model, decoder=False))
    wanted = [s for s in graph.sites() if any(f".layers.{i}." in s.name for i in args.layers)]
    source = CalibrationSource(loaded.tokenizer, args.windows, seed=0)
    nodes = {s.name: next(n for p, n in s.uses if p == "logits") for s in wanted}
    stats = collect_fx(graph.programs.logits, nodes, source.windows()[0],
                       StatsSpec(moments=False, absmax=False, gram=True), progress=True)
    rows = []
    for site in wanted:
        w = torch.from_numpy(site.weight()).double()
        parts = list(blocks(w, stats[site.name].gram, args.group))
        base = sum(float(((w @ h) * w).sum()) for w, h in parts)  # ‖Xw‖²: error = base + E

        def run(fn, parts=parts, base=base):
            e, t = timed(fn, parts)
            return base + e, t

        exact, t_exact = run(lambda w, h: piso.optimal_scales(w, piso.INT4, h))
        rtn = base + sum(float(piso.energy(w, w.abs().amax(1) / 7, piso.INT4, h).sum()) for w, h in parts)
        grid = {n: run(lambda w, h, n=n: piso.grid_scales(w, piso.INT4, h, n, args.lo, args.hi)) for n in POINTS}
        rows.append((site.name, exact, t_exact, rtn, grid))
        print(f"{site.name}: PiSO {t_exact:.2f} s, grid@100 {grid[100][1]:.2f} s", flush=True)
    write(rows, args)


def gap(value: float, exact: float) -> float:
    """Output error above PiSO's, relative to PiSO's."""
    return (value - exact) / exact


def reach(grid: dict, exact: float, tol: float) -> str:
    n = next((n for n in POINTS if gap(grid[n][0], exact) <= tol), None)
    return "never" if n is None else f"{n} ({grid[n][1]:.2f} s)"


def write(rows, args) -> None:
    head = ["| site | PiSO s | grid 100 s | grid 800 s | gap grid 100 | gap grid 800 | grid within 0.1% at | "
            "within 0.01% at | RTN gap |", "|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for name, exact, t, rtn, grid in rows:
        lines.append(f"| {name} | {t:.2f} | {grid[100][1]:.2f} | {grid[800][1]:.2f} | {gap(grid[100][0], exact):.2%} | "
                     f"{gap(grid[800][0], exact):.3%} | {reach(grid, exact, 1e-3)} | {reach(grid, exact, 1e-4)} | "
                     f"{gap(rtn, exact):.1%} |")
    total_t = sum(r[2] for r in rows)
    total_g = {n: sum(r[4][n][1] for r in rows) for n in POINTS}
    text = "\n".join([
        f"PiSO sweep vs dense scale grid, INT4 symmetric g{args.group}, dense H from {args.windows} x 512 "
        f"calibration tokens, layers {args.layers}, {args.threads} thread(s); grid over "
        f"[{args.lo}, {args.hi}]·amax/7.",
        "gap = (error_method − error_PiSO) / error_PiSO, error = ‖X(w − ŵ)‖² summed over the site's blocks.",
        "", *head, *lines, "",
        f"Total: PiSO {total_t:.1f} s; grid " + ", ".join(f"{n}: {total_g[n]:.1f} s" for n in POINTS), ""])
    out = args.out or Path("bench/results") / args.model / "piso.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
