"""SRR's preserved rank: the one-shot k* (measured and spectral probes) against a brute-force sweep
over every k, on SmolLM2's own weights and input second moments.

    .venv/bin/python bench/srr_k.py [--layers 5 15 25] [--sites q_proj down_proj] [--rank 32] \\
        [--format int4 --group 128] [--windows 8] [--threads 1]

For each chosen linear, H = XᵀX of its float input over `windows` calibration windows of 512
tokens; for k = 0..r the weight is split as SRR does (preserve k, quantize the residual with the
recipe's quantizer — PiSO scales inside GPTQ — and reconstruct with r − k) and the output error
‖S (W − Ŵ)‖² / ‖S W‖² is measured. The table gives the best k, both probes' k and their error
above the best. Writes bench/results/<model>/srr-k.md (--out names another file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from qpasses.calibration.collect_fx import collect_fx
from qpasses.calibration.source import CalibrationSource
from qpasses.calibration.stats import StatsSpec
from qpasses.export.capture import capture
from qpasses.formats import WeightFormat, dequantize_weight, quantize_weight
from qpasses.ir.fx_stage import FxStage
from qpasses.load import load_model
from qpasses.numerics import srr
from qpasses.passes.optimize_weights import solve_weight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, nargs="+", default=[5, 15, 25])
    ap.add_argument("--sites", nargs="+", default=["q_proj", "down_proj"])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--format", default="int4", choices=("int4", "mxfp4"))
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    graph = FxStage(capture(loaded.model, decoder=False))
    wanted = [s for s in graph.sites() if any(f".layers.{i}." in s.name for i in args.layers)
              and s.name.rsplit(".", 1)[-1] in args.sites]
    nodes = {s.name: next(n for p, n in s.uses if p == "logits") for s in wanted}
    source = CalibrationSource(loaded.tokenizer, args.windows, seed=0)
    stats = collect_fx(graph.programs.logits, nodes, source.windows()[0],
                       StatsSpec(moments=False, absmax=False, gram=True), progress=True)
    method = {"format": args.format, "block_size": args.group, "scales": "piso", "gptq": True}
    fmt = WeightFormat(args.format, 32 if args.format == "mxfp4" else args.group)
    rows = []
    for site in wanted:
        h = stats[site.name].gram
        w = torch.from_numpy(site.weight()).T.double()  # [K, N]
        s, s_inv = srr.whitening(h)
        norm = float((s @ w).square().sum())

        def quantize(rest, h=h):
            q = solve_weight(np.ascontiguousarray(rest.T.float().numpy()), h, **method)
            return torch.from_numpy(dequantize_weight(q)).T

        def rtn(rest):
            q = quantize_weight(np.ascontiguousarray(rest.T.float().numpy()), fmt)
            return torch.from_numpy(dequantize_weight(q)).T

        t = time.perf_counter()
        curve = [srr.srr(w, h, args.rank, quantize, k=k, whiten=(s, s_inv)).error(w, s) / norm
                 for k in range(args.rank + 1)]
        sweep = time.perf_counter() - t
        t = time.perf_counter()
        measured = srr.srr(w, h, args.rank, quantize, probe_quantize=rtn, whiten=(s, s_inv)).k
        probe_s = time.perf_counter() - t
        spectral = srr.srr(w, h, args.rank, quantize, whiten=(s, s_inv)).k
        rows.append((site.name, curve, measured, spectral, sweep, probe_s))
        print(f"{site.name}: best k {int(np.argmin(curve))}, measured k* {measured}, spectral k* {spectral}",
              flush=True)
    write(rows, args)


def write(rows, args) -> None:
    lines = ["| site | error k=0 (QER) | best k | best error | measured k* | its gap | spectral k* | its gap | "
             f"k=r ({args.rank}) gap | sweep s | probe + SRR s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, curve, measured, spectral, sweep, probe_s in rows:
        best = int(np.argmin(curve))

        def gap(k, curve=curve, best=best):
            return f"{curve[k] / curve[best] - 1:+.1%}"

        lines.append(f"| {name} | {curve[0]:.5f} | {best} | {curve[best]:.5f} | {measured} | {gap(measured)} | "
                     f"{spectral} | {gap(spectral)} | {gap(args.rank)} | {sweep:.0f} | {probe_s:.1f} |")
    text = "\n".join([
        f"SRR preserved rank k on {args.model}: rank {args.rank}, {args.format}"
        f"{f' g{args.group}' if args.format == 'int4' else ''} PiSO + GPTQ on the residual, S from "
        f"{args.windows} x 512 calibration tokens, {args.threads} thread(s).",
        "error = ‖S (W − Ŵ)‖² / ‖S W‖²; gap = error / best error − 1.", "", *lines, ""])
    out = args.out or Path("bench/results") / args.model / "srr-k.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
