"""Tabulate weight-quantization runs (optimize_weights: PiSO, grid, GPTQ; and RTN baselines) from
their saved folders: perplexity in torch and onnxruntime (80 windows, and the first 20 if
`eval20.json` is there), quantization time and peak memory, and the layer error each site's
method reached against round to nearest.

    .venv/bin/python -m qpasses.cli.main run --recipe bench/recipes/int4-w4a16-piso-gptq.toml --threads 1 \\
        --out bench/results/smollm2-135m/int4-w4a16-piso-gptq
    .venv/bin/python -m qpasses.cli.main eval bench/results/smollm2-135m/int4-w4a16-piso-gptq \\
        --windows 20 --json > bench/results/smollm2-135m/int4-w4a16-piso-gptq/eval20.json
    .venv/bin/python bench/weights.py bench/results/smollm2-135m/*-w4a16-* bench/results/smollm2-135m/*-w4a8-piso*

The layer error is the one the pass records in manifest.json (`weights`): ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖²
per linear with the H it optimized (calibration tokens; identity for the data-free grid), mean
over the 210 linears, for the method and for round to nearest with the same format. Writes the
table to bench/results/<model>/weights.md (--out names another file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(folder: Path) -> str:
    report = json.loads((folder / "report.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    weights = manifest.get("weights", {})
    passes = {p["name"]: p for p in manifest["passes"]}
    method = ", ".join(f"{k} {v}" for p in ("optimize_weights", "quantize_weights") if p in passes
                       for k, v in passes[p]["rewrites"].items())
    seconds = sum(passes[p]["seconds"] for p in ("optimize_weights", "quantize_weights") if p in passes)
    eval20 = folder / "eval20.json"
    ppl20 = json.loads(eval20.read_text())["ppl"] if eval20.is_file() and eval20.stat().st_size else None
    if weights:
        rtn = sum(v["rtn"] for v in weights.values()) / len(weights)
        opt = sum(v["optimized"] for v in weights.values()) / len(weights)
        error = f"{rtn:.4f} → {opt:.4f} ({opt / rtn - 1:+.1%})"
    else:
        error = "-"
    stage_a = report.get("ppl_stage_a")
    return (f"| {folder.name} | {method} | {'-' if stage_a is None else f'{stage_a:.4f}'} | "
            f"{report['ppl_quant']:.4f} | {report['ppl_quant'] / report['ppl_fp']:.3f} | "
            f"{'-' if ppl20 is None else f'{ppl20:.4f}'} | "
            f"{seconds:.0f} | {report['quantize_seconds']:.0f} | {report['peak_rss_bytes'] / 2**30:.2f} | {error} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = [r for r in args.runs if (r / "report.json").is_file()]
    if not runs:
        raise SystemExit("no run folder with a report.json among the arguments")
    model = json.loads((runs[0] / "report.json").read_text())["model"]
    lines = ["| run | method (sites) | ppl torch 80w | ppl ORT 80w | x fp | ppl ORT 20w | method s | quantize s | "
             "peak RSS GiB | mean layer error RTN → method |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(r) for r in runs]
    text = "\n".join(lines) + "\n"
    out = args.out or Path("bench/results") / model / "weights.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
