"""Where the default recipe's quantize time and memory go, stage by stage, on SmolLM2-135M and
the 1B Llama-shaped model: model load, capture, calibration forwards, statistics (Gram
matrices), PiSO scale search, GPTQ, each pass's remainder, export, lowering, write.

Each model runs once as `qpasses run` in a child (default recipe, default calibration, the
layer-error probe on, no perplexity evaluation unless --eval-windows: its three evaluations are
not quantize time; a few windows check the deployed file against stage A, e.g. on the 1B model
whose random weights make perplexity itself meaningless);
the run's profile (qpasses.profiling: exclusive wall and CPU seconds and peak resident memory
per stage) is saved under a label, and docs/quantize_profile.md shows every saved label side by
side, so a change is measured as a before / after pair on the same machine.

    .venv/bin/python bench/quantize_profile.py --label after                 # SmolLM2 (minutes)
    .venv/bin/python bench/quantize_profile.py --label after --models 1b --eval-windows 2   # 1B (tens of minutes)
    .venv/bin/python bench/quantize_profile.py --table-only                  # rewrite the doc from saved runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from child_run import run_qpasses  # bench/child_run.py: a script's folder is sys.path[0]
from scale import ensure_1b

ROOT = Path(__file__).resolve().parent.parent

RUNS = ROOT / "bench" / "results" / "profile"
GiB = 2**30


def model_path(key: str) -> str:
    return "smollm2-135m" if key == "smollm2" else str(ensure_1b(16))


def profile(key: str, label: str, threads: int | None, eval_windows: int | None) -> dict:
    evaluation = ["--eval-windows", str(eval_windows)] if eval_windows else ["--no-eval"]
    args = ["--model", model_path(key), *evaluation, *(["--threads", str(threads)] if threads else [])]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    out = Path(tempfile.gettempdir()) / f"qpasses-profile-{key}-{os.getpid()}"
    row = {"model": key, "label": label, "commit": commit.strip(),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), **run_qpasses(out, args, "[profile]")}
    shutil.rmtree(out, ignore_errors=True)
    del row["curve"]  # bench/scale.py keeps the memory curves; here only the per-stage peaks matter
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{key}-{label}.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def table(rows: list[dict]) -> list[str]:
    """Stages as rows, one seconds / cores / peak column group per saved label."""
    stages = sorted({s for r in rows for s in r["profile"]},
                    key=lambda s: -max(r["profile"].get(s, {}).get("seconds", 0) for r in rows))
    head = "| stage | " + " | ".join(f"{r['label']} s | cores | peak GiB" for r in rows) + " |"
    md = [head, "|---|" + "---:|---:|---:|" * len(rows)]
    for s in stages:
        cells = []
        for r in rows:
            p = r["profile"].get(s)
            cells.append(" | | " if p is None else f"{p['seconds']:.1f} | "
                                                    f"{p['cpu_seconds'] / max(p['seconds'], 1e-9):.2f} "
                                                    f"| {p['peak_rss_bytes'] / GiB:.2f}")
        md.append(f"| {s} | " + " | ".join(cells) + " |")
    md.append("| **quantize_seconds** | " + " | ".join(f"**{r['quantize_seconds']:.0f}** | | " for r in rows) + " |")
    md.append("| **whole run, peak RSS** | " + " | ".join(f"{r['wall_seconds']:.0f} | | {r['peak_rss_bytes'] / GiB:.2f}"
                                                            for r in rows) + " |")
    return md


def ppl(r: dict) -> str:
    if not r.get("eval_windows"):
        return ""
    return (f"; perplexity on {r['eval_windows']} windows: float {r['ppl_fp']:.4f}, stage A {r['ppl_stage_a']:.4f}, "
            f"deployed {r['ppl_quant']:.4f}")


def document(path: Path) -> None:
    md = ["# Where the quantize time goes", "",
          "Made by `bench/quantize_profile.py` (its docstring says how); each column group is one run of the default "
          "recipe (`qpasses run --no-eval`, layer-error probe on). Seconds are exclusive (a pass's row holds what its "
          "forwards, statistics and solves leave over); cores = CPU seconds / wall seconds; peak is the resident "
          "memory sampled while the stage ran. `quantize_seconds` is the report's: capture, passes, export and write, "
          "without load, evaluation and the layer-error probe.", ""]
    for key in ("smollm2", "1b"):
        rows = sorted((json.loads(p.read_text()) for p in RUNS.glob(f"{key}-*.json")), key=lambda r: r["date"])
        if not rows:
            continue
        md += [f"## {rows[0]['model']}", ""]
        md += [f"* {r['label']}: commit {r['commit']}, {r['date']}, {r['threads']} threads, 1-minute load average "
               f"{r['load_average']:.2f} at the start{ppl(r)}" for r in rows]
        md += ["", *table(rows), ""]
    path.write_text("\n".join(md))
    print("\n".join(md))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=("smollm2", "1b"), default=["smollm2"])
    ap.add_argument("--label", default="current", help="name of this run's column (e.g. before, after)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    ap.add_argument("--eval-windows", type=int, default=None,
                    help="measure perplexity on this many windows (float, stage A, deployed) instead of none")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the document from the saved runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "quantize_profile.md")
    args = ap.parse_args(argv)
    if not args.table_only:
        for key in args.models:
            profile(key, args.label, args.threads, args.eval_windows)
    document(args.out)


if __name__ == "__main__":
    main()
