"""Tabulate SRR / QER runs (optimize_weights with a low-rank branch) from their saved folders:
perplexity against rank, next to the rank-0 run of the same quantizer, with the share of the
remaining gap to the float model each rank closes, bits per weight, file size, time and memory.

    R=bench/results/smollm2-135m
    .venv/bin/python -m qpasses.cli.main run --recipe bench/recipes/mxfp4-w4a16-srr.toml --threads 1 \\
        --out $R/mxfp4-w4a16-srr-r32
    .venv/bin/python -m qpasses.cli.main eval $R/mxfp4-w4a16-srr-r32 --windows 20 --json \\
        > $R/mxfp4-w4a16-srr-r32/eval20.json
    .venv/bin/python -m qpasses.cli.main run --recipe bench/recipes/mxfp4-w4a16-qer.toml \\
        --set optimize_weights.rank=16 --eval-windows 20 --threads 1 --out $R/mxfp4-w4a16-qer-r16
    .venv/bin/python bench/srr.py $R/*-srr-* $R/*-qer-* [--rank0 mxfp4-w4a16=mxfp4-w4a16-piso-gptq]

A folder is named <setting>-<srr|qer>-r<rank> (or -b<bits> for a bit budget); its report gives the
perplexity on 80 windows (or 20 for a sweep run, `--eval-windows 20`) and eval20.json, when there,
the first 20. Rank 0 is the same recipe without the branch: a <setting>-srr-r0 folder, or else its
perplexities come from the `weights.md` table of the same results folder (issue 7's runs;
`--rank0 SETTING=RUN` maps a setting to a row there), its bits per weight and size from a
`<setting>-rtn-speed` folder (same format and layout) when one is given. Writes
bench/results/<model>/srr.md (--out names another file).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

NAME = re.compile(r"^(?P<setting>.+)-(?P<method>srr|qer)-(?P<kind>[rb])(?P<size>[\d.]+)$")
RANK0 = {"int4-w4a16": "int4-w4a16-piso-gptq-g128", "mxfp4-w4a16": "mxfp4-w4a16-piso-gptq"}


def load(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    eval20 = folder / "eval20.json"
    ppl = {report["eval_windows"]: report["ppl_quant"]}
    fp = {report["eval_windows"]: report["ppl_fp"]}
    if eval20.is_file() and eval20.stat().st_size:
        ppl[20] = json.loads(eval20.read_text())["ppl"]
    weights = manifest.get("weights", {}).values()
    ranked = [w for w in weights if w.get("rank")]
    seconds = {p["name"]: p["seconds"] for p in report["passes"]}
    return {"ppl": ppl, "fp": fp, "bpw": report["bits_per_weight"], "mb": report["onnx_bytes"] / 1e6,
            "quantize_s": report["quantize_seconds"], "method_s": seconds.get("optimize_weights"),
            "peak": report["peak_rss_bytes"] / 2**30,
            "k": sum(w["preserved"] for w in ranked) / len(ranked) if ranked else 0.0,
            "r": sum(w["rank"] for w in ranked) / len(ranked) if ranked else 0.0,
            "error": sum(w["optimized"] for w in weights) / max(1, len(weights))}


def weights_table(path: Path) -> dict[str, dict[int, float]]:
    """{run: {80: ppl, 20: ppl}} from bench/weights.py's table."""
    out = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 5 and re.match(r"^\d", cells[3]):
            out[cells[0]] = {80: float(cells[3]), **({20: float(cells[5])} if cells[5] != "-" else {})}
    return out


def fmt(x, spec=".2f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--rank0", action="append", default=[], metavar="SETTING=RUN",
                    help="the weights.md row holding a setting's rank-0 run (defaults: " +
                         ", ".join(f"{k}={v}" for k, v in RANK0.items()) + ")")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rank0 = {**RANK0, **dict(a.split("=", 1) for a in args.rank0)}
    runs = {}
    for folder in args.runs:
        m = NAME.match(folder.name)
        if m and (folder / "report.json").is_file():
            runs[folder] = (m, load(folder))
    if not runs:
        raise SystemExit("no <setting>-<srr|qer>-r<rank> folder with a report.json among the arguments")
    results = next(iter(runs)).parent
    model = json.loads((next(iter(runs)) / "report.json").read_text())["model"]
    table0 = weights_table(results / "weights.md")
    fp = {}
    for _, r in runs.values():
        fp.update(r["fp"])
    lines = [f"fp: {fmt(fp.get(80), '.4f')} (80 x 512), {fmt(fp.get(20), '.4f')} (first 20 windows). "
             "Gap closed = (ppl rank 0 − ppl) / (ppl rank 0 − fp), on the windows of each column.", "",
             "| setting | method | rank | ppl 80w | gap closed 80w | ppl 20w | gap closed 20w | bits/weight | "
             "file MB | mean k* | mean site error | optimize_weights s | quantize s | peak GiB |",
             "|" + "---|" * 14]
    settings = sorted({m["setting"] for m, _ in runs.values()})
    for setting in settings:
        zero = [r for m, r in runs.values() if m["setting"] == setting and m["kind"] == "r" and float(m["size"]) == 0]
        base = zero[0]["ppl"] if zero else table0.get(rank0.get(setting, ""), {})
        speed = results / f"{setting}-rtn-speed" / "report.json"
        size = json.loads(speed.read_text()) if speed.is_file() else {}
        if zero:
            size = {"bits_per_weight": zero[0]["bpw"], "onnx_bytes": zero[0]["mb"] * 1e6}
        source = f"{setting}-srr-r0" if zero else rank0.get(setting, "–")
        lines.append(f"| {setting} | rank 0 ({source}) | 0 | {fmt(base.get(80))} | | "
                     f"{fmt(base.get(20))} | | {fmt(size.get('bits_per_weight'))} | "
                     f"{fmt(size['onnx_bytes'] / 1e6 if size else None, '.1f')} | | | | | |")
        rows = sorted(((m, r) for m, r in runs.values() if m["setting"] == setting and (m["kind"], float(m["size"]))
                       != ("r", 0)),
                      key=lambda mr: (mr[0]["kind"], float(mr[0]["size"]), mr[0]["method"]))
        for m, r in rows:
            gaps = [None if w not in r["ppl"] or w not in base or w not in fp else
                    (base[w] - r["ppl"][w]) / (base[w] - fp[w]) for w in (80, 20)]
            rank = m["size"] if m["kind"] == "r" else f"budget {m['size']} b/w (mean {r['r']:.1f})"
            lines.append(
                f"| {setting} | {m['method'].upper()} | {rank} | {fmt(r['ppl'].get(80))} | "
                f"{fmt(gaps[0], '.0%')} | {fmt(r['ppl'].get(20))} | {fmt(gaps[1], '.0%')} | {r['bpw']:.2f} | "
                f"{r['mb']:.1f} | {r['k']:.1f} | {r['error']:.5f} | {fmt(r['method_s'], '.0f')} | "
                f"{r['quantize_s']:.0f} | {r['peak']:.2f} |")
    text = "\n".join(lines) + "\n"
    out = args.out or Path("bench/results") / model / "srr.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
