"""Time, CPU time and peak memory of the default recipe against model size: tiny-llama,
SmolLM2-135M and a 1B-parameter Llama.

Every model goes through the same `qpasses run` command in a child process (default recipe and
calibration, same threads; no evaluation, since the 1B model's weights are random). The parent
samples the child's resident memory twice a second, so the table's peak (the child's own
ru_maxrss, from report.json) comes with plots of memory over time, passes marked, and of quantize
time, CPU time and peak memory against parameters.

    .venv/bin/python bench/scale.py              # the three models, 16 layers for the 1B one (about half an hour)
    .venv/bin/python bench/scale.py --layers 2   # the 1B shape cut to 2 layers: a check in minutes
    .venv/bin/python bench/scale.py --reuse      # keep the runs (bench/results/scale/*.json) of the same command

The 1B folder (bench/llama_1b.py, seeded bf16 safetensors shards) is built once under the
qpasses cache. Writes docs/scale.md, docs/scale_rss.png, docs/scale_growth.png and
bench/results/scale/scale.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from child_run import run_qpasses  # bench/child_run.py: a script's folder is sys.path[0]

ROOT = Path(__file__).resolve().parent.parent

RUNS = ROOT / "bench" / "results" / "scale"
GiB = 2**30


def run(name: str, model: str, args) -> dict:
    """One `qpasses run` in a child; its report's figures plus the sampled memory curve and pass marks."""
    cmd = ["--model", model, "--recipe", args.recipe, "--no-eval", "--threads", str(args.threads),
           *(["--calib-windows", str(args.calib_windows)] if args.calib_windows else [])]
    saved = RUNS / f"{name}.json"
    if args.reuse and saved.is_file() and json.loads(saved.read_text()).get("args") == cmd:
        print(f"[scale] {name}: reusing {saved}", file=sys.stderr, flush=True)
        return json.loads(saved.read_text())
    row = {"name": name, **run_qpasses(RUNS / name, cmd, "[scale]")}
    saved.write_text(json.dumps(row) + "\n")
    return row


def ensure_1b(layers: int) -> Path:
    import llama_1b

    from qpasses.cache import cache_dir, locked

    folder = cache_dir() / "models" / f"llama-1b-random-seed0-{layers}layers"
    with locked(folder.with_name(f".{folder.name}.lock")):
        if not folder.is_dir():
            llama_1b.build(folder, layers)
    return folder


def table(rows: list[dict]) -> list[str]:
    base = next(r for r in rows if r["name"].startswith("smollm2"))
    md = ["| model | parameters | quantize time (s) | time / parameter vs 135M | whole run CPU s | peak RSS (GiB) "
          "| peak / fp32 weights | deployed size (MB) | size / fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = (r["quantize_seconds"] / r["weight_count"]) / (base["quantize_seconds"] / base["weight_count"])
        md.append(f"| {r['name']} | {r['weight_count'] / 1e6:.1f}M | {r['quantize_seconds']:.0f} | {per:.2f}x "
                  f"| {r['cpu_seconds']:.0f} | {r['peak_rss_bytes'] / GiB:.2f} "
                  f"| {r['peak_rss_bytes'] / r['fp32_onnx_bytes']:.2f}x | {r['onnx_bytes'] / 1e6:.1f} "
                  f"| {r['onnx_bytes'] / r['fp32_onnx_bytes']:.3f}x |")
    return md


def growth(rows: list[dict], path: Path) -> None:
    """Quantize time, CPU time and peak RSS against parameters, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = [r["weight_count"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.loglog(p, [r["quantize_seconds"] for r in rows], "o-", label="quantize time (wall)")
    left.loglog(p, [r["cpu_seconds"] for r in rows], "s--", label="CPU seconds (whole run)")
    left.set(xlabel="parameters", ylabel="seconds", title="time against model size")
    right.loglog(p, [r["peak_rss_bytes"] / GiB for r in rows], "o-", color="C2", label="peak RSS")
    right.loglog(p, [r["fp32_onnx_bytes"] / GiB for r in rows], ":", color="C7", label="fp32 weights")
    right.set(xlabel="parameters", ylabel="GiB", title="memory against model size")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        for r, x in zip(rows, p):
            ax.annotate(r["name"], (x, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom", ha="right", color="C7")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 3.2 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        t, rss = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot([x / 60 for x in t], [b / GiB for b in rss], color="C0")
        ax.axhline(r["fp32_onnx_bytes"] / GiB, color="C7", ls=":", lw=1)
        ax.annotate("fp32 weights", (0, r["fp32_onnx_bytes"] / GiB), fontsize=7, color="C7", va="bottom")
        for at, name in r["marks"]:
            ax.axvline(at / 60, color="C3", lw=0.6, alpha=0.5)
            ax.annotate(name, (at / 60, ax.get_ylim()[1]), fontsize=6, rotation=90, va="top", ha="right", color="C3")
        ax.set(title=f"{r['name']} ({r['weight_count'] / 1e6:.0f}M parameters): resident memory of the run",
               xlabel="minutes", ylabel="RSS (GiB)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=16, help="decoder layers of the 1B-shaped model (default 16)")
    ap.add_argument("--recipe", default="int4-w4a16", help="recipe of both runs (default int4-w4a16, the default)")
    ap.add_argument("--calib-windows", type=int, default=None,
                    help="calibration windows of 512 tokens (default: qpasses')")
    ap.add_argument("--threads", type=int, default=2, help="threads of each run (default 2)")
    ap.add_argument("--reuse", action="store_true", help="reuse a model's earlier run made with the same command")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where scale.md and scale_rss.png go (docs/)")
    args = ap.parse_args(argv)
    start = datetime.datetime.now().isoformat(timespec="seconds")
    big = ensure_1b(args.layers)
    rows = [run("tiny-llama", "tiny-llama", args), run("smollm2-135m", "smollm2-135m", args),
            run(f"llama-1b-{args.layers}layers", str(big), args)]
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows[1:], args.out / "scale_rss.png")
    growth(rows, args.out / "scale_growth.png")
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / "scale.json").write_text(json.dumps({"start": start, "argv": argv, "rows": rows}, indent=1) + "\n")
    md = ["# Time and memory against model size", "",
          f"* command: `.venv/bin/python bench/scale.py {' '.join(argv)}`; {start}; {os.cpu_count()} cores, "
          f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          f"* each run: `qpasses run {' '.join(rows[0]['args'][2:])}` (default recipe and calibration unless "
          "given); quantize time is capture, calibration, passes, lowering, export and write; CPU seconds are the "
          "whole child process's; peak RSS is the whole process's (loading included)", "", *table(rows), "",
          "![growth with size](scale_growth.png)", "", "![memory over time](scale_rss.png)", ""]
    (args.out / "scale.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
