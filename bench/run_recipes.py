"""Run recipes on a model, one process each, and tabulate their reports.

    .venv/bin/python bench/run_recipes.py                      # every RTN recipe on smollm2-135m, 80 windows
    .venv/bin/python bench/run_recipes.py --recipes fp int4-w4a16-rtn --eval-windows 8

A name is a built-in recipe or one of bench/recipes/NAME.toml (the RTN variants that are not built in).

Writes bench/results/<model>/<recipe>/ (the deployed folders with their reports) and
bench/results/<model>/recipes.md (the table; --table names another file). Each run is a separate `qpasses run`
process so wall time and peak RSS are per recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = ["fp", "int4-w4a16-rtn", "mxfp4-w4a16-rtn", "int4-w4a8-rtn", "mxfp4-w4a8-rtn", "mxfp4-w4a4-rtn",
           "int4-w4a4-rtn", "int4-w4a16-rtn-full", "mxfp4-w4a16-rtn-full", "mxfp4-w4a8-rtn-full"]


def run(model: str, recipe: str, out: Path, args) -> dict:
    f = Path(__file__).parent / "recipes" / f"{recipe}.toml"
    ref = str(f) if f.is_file() else recipe
    cmd = [sys.executable, "-m", "qpasses.cli.main", "run", "--model", model, "--recipe", ref, "--out", str(out),
           "--eval-windows", str(args.eval_windows), "--force", "--no-progress"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_stage_a_eval:
        cmd.append("--no-stage-a-eval")
    t = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        return {"recipe": recipe, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    (out / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    return saved(out, recipe)


def saved(out: Path, recipe: str) -> dict:
    """A finished run's report, with the wall time the benchmark recorded next to it."""
    if not (out / "report.json").is_file():
        return {"recipe": recipe, "error": "no report (not run yet)"}
    report = json.loads((out / "report.json").read_text())
    wall = out / "wall_seconds.txt"
    report["wall_seconds"] = float(wall.read_text()) if wall.is_file() else report["total_seconds"]
    return report


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| recipe | ppl torch (stage A) | ppl ORT (deployed) | ORT vs torch | file MB | x fp32 file | "
             "bits/weight | wall s | peak RSS GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | error: {r['error']} |")
            continue
        a, q = r["ppl_stage_a"], r["ppl_quant"]
        rel = None if a is None or q is None else 100 * (q - a) / a
        lines.append(f"| {r['recipe']} | {fmt(a, '.4f')} | {fmt(q, '.4f')} | {fmt(rel, '+.3f')}% | "
                     f"{r['onnx_bytes'] / 1e6:.1f} | {r['onnx_bytes'] / r['fp32_onnx_bytes']:.3f} | "
                     f"{r['bits_per_weight']:.2f} | {r['wall_seconds']:.0f} | {r['peak_rss_bytes'] / 2**30:.2f} |")
    return "\n".join(lines)


def pass_table(rows: list[dict]) -> str:
    """Seconds of each pass (and the export) per recipe, as the reports recorded them."""
    lines = ["| recipe | pass times (s) |", "|---|---|"]
    for r in rows:
        if "error" not in r:
            lines.append(f"| {r['recipe']} | " + ", ".join(f"{p['name']} {p['seconds']:.1f}" for p in r["passes"])
                         + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--recipes", nargs="+", default=DEFAULT)
    p.add_argument("--eval-windows", type=int, default=80)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-stage-a-eval", action="store_true",
                   help="skip the torch perplexity of each transformed program")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--table", default="recipes.md", help="file name of the table, next to the deployed folders")
    p.add_argument("--table-only", action="store_true", help="rebuild the table from the saved reports, run nothing")
    args = p.parse_args()
    base = args.results / Path(args.model).stem
    rows = []
    for recipe in args.recipes:
        if args.table_only:
            rows.append(saved(base / recipe, recipe))
            continue
        print(f"== {recipe}", flush=True)
        rows.append(run(args.model, recipe, base / recipe, args))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    how = ("rebuilt from the reports saved by earlier `bench/run_recipes.py` runs" if args.table_only
           else f"command: `{' '.join(sys.argv)}`")
    text = (f"# {args.model}: built-in recipes, {args.eval_windows} x 512 eval windows\n\n{how}. "
            f"ppl torch = the stage-A program; ppl ORT = the deployed model.onnx in onnxruntime; wall time = the "
            f"whole `qpasses run` (three perplexity passes, capture, export, save).\n\n{table(rows)}\n\n"
            f"Time of each pass (calibration statistics included where a pass collects them):\n\n{pass_table(rows)}\n")
    base.mkdir(parents=True, exist_ok=True)
    (base / args.table).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
