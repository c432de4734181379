"""Tabulate learned channel scales (smooth_inputs) from saved runs: the down_proj layer error of
every rung of the policy ladder, and the perplexity / calibration cost of each run.

    .venv/bin/python -m qpasses.cli.main run --recipe bench/recipes/mxfp4-w4a4-smoothrot-trained.toml \\
        --out bench/results/smollm2-135m/mxfp4-w4a4-smoothrot-trained --no-stage-a-eval
    .venv/bin/python bench/smoothing.py bench/results/smollm2-135m/*smoothrot* bench/results/smollm2-135m/*-online

The layer errors are the held-out ones the pass records in manifest.json (`smoothing.sites`):
mean over the sites whose input class is `other` (down_proj) and the worst site, each with its
change relative to SmoothRot (the `policy` rung: max statistic, alpha 0.5). Writes the tables
to bench/results/<model>/smoothing.md (--out names another file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNGS = ("none", "policy", "quantile", "joint", "trained")
NAMES = {"none": "rotation only (s = 1)", "policy": "SmoothRot (max, alpha 0.5)", "quantile": "quantile-only search",
         "joint": "joint (alpha, q) search", "trained": "trained"}
PAPER = {"quantile": "−11.1%", "joint": "−12%", "trained": "−18.5% / −19.9%"}


def ladder(folder: Path) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    sites = {n: s["heldout_error"] for n, s in manifest.get("smoothing", {}).get("sites", {}).items()
             if n.endswith("down_proj")}
    if not sites:
        return []
    lines = [f"**{folder.name}** ({len(sites)} down_proj sites, held-out tokens)", "",
             "| scales | mean error | vs SmoothRot | worst site error | vs SmoothRot | paper (LLaMA-3.2-1B) |",
             "|---|---|---|---|---|---|"]
    base = [e["policy"] for e in sites.values()]
    base_mean, worst = sum(base) / len(base), max(sites, key=lambda n: sites[n]["policy"])
    for rung in RUNGS:
        if rung not in next(iter(sites.values())):
            continue
        vals = [e[rung] for e in sites.values()]
        mean, w = sum(vals) / len(vals), sites[worst][rung]
        lines.append(f"| {NAMES[rung]} | {mean:.5f} | {100 * (mean / base_mean - 1):+.1f}% | {w:.5f} | "
                     f"{100 * (w / sites[worst]['policy'] - 1):+.1f}% | {PAPER.get(rung, '')} |")
    info = manifest["smoothing"].get("classes", {}).get("other", {})
    chosen = [f"{k}: alpha {info[k]['alpha']}, q {info[k]['quantile']}" for k in ("quantile", "joint") if k in info]
    lines += ["", f"Worst site: {worst}; selected for the search: {info.get('selected')}. " + "; ".join(chosen), ""]
    return lines


def cost_row(folder: Path) -> str:
    r = json.loads((folder / "report.json").read_text())
    passes = json.loads((folder / "manifest.json").read_text())["passes"]
    smooth = sum(p["seconds"] for p in passes if p["name"] == "smooth_inputs")
    ppl = r.get("ppl_quant")
    return (f"| {folder.name} | {ppl:.4f} | {smooth:.0f} | {r.get('quantize_seconds', 0):.0f} | "
            f"{r.get('peak_rss_bytes', 0) / 2**30:.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="deployed folders of `qpasses run`")
    ap.add_argument("--out", type=Path, help="markdown file (default: smoothing.md next to the first run)")
    args = ap.parse_args(argv)
    runs = [f for f in args.runs if (f / "report.json").is_file()]
    lines = ["| run | ppl ORT (80 x 512) | smooth_inputs s | quantize s | peak RSS GiB |", "|---|---|---|---|---|"]
    lines += [cost_row(f) for f in runs]
    lines.append("")
    ladders = [ladder(f) for f in runs]
    full = [lad for lad in ladders if any(line.startswith("| trained |") for line in lad)]
    for lad in full or ladders:  # the complete ladders say it all: shorter ones repeat their rungs
        lines += lad
    text = "\n".join(lines) + "\n"
    out = args.out or runs[0].parent / "smoothing.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
