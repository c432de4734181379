"""The results benchmark: every composed recipe and an ablation of its stages on SmolLM2-135M, in one run.

    ./dev bench              # the whole table: hours on 2 cores; finished runs are reused
    ./dev bench --quick      # smoke run: tiny-llama, RTN-only ablation, one speed round, no llama.cpp (minutes)

For every recipe one `qpasses run` process (so time and peak RSS are per recipe) writes its deployed folder
under bench/results/pipeline/<recipe>/; a folder made by the same passes and settings on the same windows is
reused (--rerun: run again). The composed recipes (qpasses.recipe.COMPOSED) are measured on 80 x 512 windows
and again on the first 20 with `qpasses eval`; the ablation recipes (RTN and single methods, each setting) on
20. Then decode and prefill speed of the composed folders, fp32 and the MatMulNBits RTN file in onnxruntime
(bench/generate.py: interleaved rounds, median), and llama.cpp's Q4_0 and MXFP4 files of the same model with
llama-bench (bench/llamacpp.py), in the same run.

Writes <out>/results.md (tables, the command, versions, CPU, load) and results.json, and two plots:
ppl_vs_bits.png (perplexity against bits per weight) and ppl_vs_decode.png (perplexity against decode
tokens/s, fp32 and the MatMulNBits file as reference points). Default out: docs/ (quick: runs/pipeline-quick/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import generate  # bench/generate.py, the ORT speed loop (a script's folder is sys.path[0])
from tokenizers import Tokenizer

from qpasses.recipe import COMPOSED, load_recipe, parse

ROOT = Path(__file__).resolve().parent.parent

RUNS = ROOT / "bench" / "results" / "pipeline"
ABLATIONS = ROOT / "bench" / "recipes"  # the recipes that are not built in, by name
FP = ("fp", "fp", [])
NBITS = ("int4-w4a16-rtn-full-nbits", "int4-w4a16-rtn-full", ["lower_linears.target=matmulnbits"])
# setting -> (composed recipe, target ppl on 80 windows, ablation recipes: RTN first, then single stages)
SETTINGS = {
    "INT4 W4A16": ("int4-w4a16", 18.0, ["int4-w4a16-rtn", "int4-w4a16-rtn-full", "int4-w4a16-piso",
                                        "int4-w4a16-gptq", "int4-w4a16-piso-gptq", "int4-w4a16-qer"]),
    "MXFP4 W4A16": ("mxfp4-w4a16", 18.5, ["mxfp4-w4a16-rtn", "mxfp4-w4a16-rtn-full", "mxfp4-w4a16-piso-gptq",
                                          "mxfp4-w4a16-qer"]),
    "MXFP4 W4A8": ("mxfp4-w4a8", 19.0, ["mxfp4-w4a8-rtn", "mxfp4-w4a8-piso-gptq"]),
    "MXFP4 W4A4": ("mxfp4-w4a4", 21.0, ["mxfp4-w4a4-rtn", "mxfp4-w4a4-online", "mxfp4-w4a4-smoothrot-trained",
                                        "mxfp4-w4a4-srr"]),
    "INT4 W4A4": ("int4-w4a4", 25.0, ["int4-w4a4-rtn", "int4-w4a4-online", "int4-w4a4-smoothrot-trained"]),
}
# Peers on the same model, texts and first 20 windows (docs/evaluation.md#peers; not run here).
PEERS = {
    "INT4 W4A16": [("ORT MatMulNBitsQuantizer HQQ g64 (asym, float zero point)", 23.66),
                   ("ORT MatMulNBitsQuantizer DEFAULT sym g32", 24.87),
                   ("llm-compressor GPTQ sym g64", 25.33), ("llm-compressor GPTQ sym g32", 25.41)],
    "MXFP4 W4A4": [("llm-compressor QuIP online Hadamard + MXFP4 RTN", 46.86), ("AMD Quark MXFP4 RTN", 59.28)],
}
assert tuple(s[0] for s in SETTINGS.values()) == COMPOSED
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[pipeline {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def qpasses(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qpasses.cli.main", *args], text=True, capture_output=True)


def runs_the_same(text: str) -> tuple:
    """What a recipe text runs: its passes with their settings (the `# --set` lines a run appends
    applied), overrides and ignore list; comments and descriptions do not count."""
    sets = [line[len("# --set "):] for line in text.splitlines() if line.startswith("# --set ")]
    r = parse(text, "recipe").with_sets(sets)
    return r.passes, r.ignore, r.overrides


def recipe_ref(name: str) -> str:
    """What `--recipe` takes for a recipe name: the path of bench/recipes/NAME.toml, or the built-in name."""
    f = ABLATIONS / f"{name}.toml"
    return str(f) if f.is_file() else name


def measure(name: str, recipe: str, sets: list[str], windows: int, args, eval20: bool = False) -> dict:
    """The run's report (reused when the same recipe text and windows made it), plus `ppl20`."""
    out, ref = args.runs / name, recipe_ref(recipe)
    want = runs_the_same(load_recipe(ref).with_sets(sets).text)
    path, manifest = out / "report.json", out / "manifest.json"
    old = json.loads(path.read_text()) if path.is_file() and manifest.is_file() else None
    if args.rerun or not old or old.get("eval_windows") != windows or old.get("model") != args.model \
            or runs_the_same(json.loads(manifest.read_text())["recipe"]["text"]) != want:
        log(f"run {name} ({windows} windows)")
        cmd = ["run", "--model", args.model, "--recipe", ref, "--out", str(out), "--eval-windows", str(windows),
               "--force", "--no-progress", "--no-layer-error", *[a for s in sets for a in ("--set", s)]]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--calib-windows", str(args.calib_windows)] if args.calib_windows else []
        proc = qpasses(*cmd)
        if proc.returncode:
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            log(f"{name} failed: {err}")
            return {"name": name, "recipe": recipe, "error": err}
    else:
        log(f"reuse {name} ({out})")
    report = {"name": name, **json.loads(path.read_text())}
    report["ppl20"] = report["ppl_quant"] if windows == 20 else None
    if eval20 and windows != 20:
        cached = out / "eval20.json"
        if not cached.is_file() or cached.stat().st_mtime < path.stat().st_mtime:
            proc = qpasses("eval", str(out), "--windows", "20", "--json", "--no-progress",
                           *(["--threads", str(args.threads)] if args.threads else []))
            if proc.returncode == 0:
                cached.write_text(proc.stdout)
        report["ppl20"] = json.loads(cached.read_text())["ppl"] if cached.is_file() else None
    return report


def speeds(folders: dict[str, Path], args) -> list[dict]:
    ns = argparse.Namespace(threads=args.speed_threads, rounds=args.rounds, tokens=args.tokens, iobinding=False)
    tok = Tokenizer.from_file(str(next(iter(folders.values())) / "tokenizer.json"))
    ids = tok.encode(generate.TEXT).ids
    ids = (ids * (512 // len(ids) + 1))[:512]
    return generate.speed(folders, (ids[:generate.DECODE_PROMPT], ids[:args.prompt]), ns)


def llamacpp(args) -> tuple[list[dict], str]:
    try:
        import llamacpp as lc

        tools = lc.ensure_llamacpp()
        rows = lc.bench(tools, lc.ensure_gguf_files(tools, ("q4_0", "mxfp4")), args.speed_threads, args.prompt,
                        args.tokens, 5)
        return rows, f"llama.cpp {tools.info['llama_cpp_commit']} (llama-cpp-python {tools.info['llama_cpp_python']})"
    except Exception as e:  # noqa: BLE001  (a broken llama.cpp build must not lose our numbers)
        log(f"llama.cpp skipped: {type(e).__name__}: {e}")
        return [], f"llama.cpp rows skipped: {type(e).__name__}: {e}"


def f(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def row_cells(r: dict) -> list[str]:
    return [f(r.get("ppl_stage_a")), f(r.get("ppl_quant")), f(r.get("ppl20")), f(r["onnx_bytes"] / 1e6, ".1f"),
            f(r["onnx_bytes"] / r["fp32_onnx_bytes"], ".3f"), f(r["bits_per_weight"]), f(r["quantize_seconds"], ".0f"),
            f(r["peak_rss_bytes"] / 2**30)]


COLS = "ppl torch | ppl ORT | ppl ORT 20w | file MB | x fp32 | bits/weight | quantize s | peak RSS GiB"


def tables(composed: dict, ablation: dict, refs: dict, speed: list[dict], llama: list[dict], windows: int) -> list[str]:
    by = {(s["variant"], s["threads"]): s for s in speed}
    threads = sorted({s["threads"] for s in speed})
    md = [f"## Composed recipes ({windows} windows; 20-window column for the peers)", "",
          f"| setting | recipe | target | met | {COLS} | " + " | ".join(f"decode tok/s {t}T" for t in threads) + " |",
          "|" + "---|" * (12 + len(threads))]
    for setting, r in composed.items():
        target = SETTINGS[setting][1]
        if "error" in r:
            md.append(f"| {setting} | {r['name']} | {target} | error: {r['error']} |")
            continue
        met = "yes" if r["ppl_quant"] <= target else f"no (+{r['ppl_quant'] - target:.2f})"
        md.append(f"| {setting} | **{r['name']}** | ≤ {target} | {met} | " + " | ".join(row_cells(r)) + " | "
                  + " | ".join(f(by.get((r["name"], t), {}).get("decode_tps"), ".0f") for t in threads) + " |")
    for name, r in refs.items():
        if "error" not in r:
            md.append(f"| reference | {name} | | | " + " | ".join(row_cells(r)) + " | "
                      + " | ".join(f(by.get((name, t), {}).get("decode_tps"), ".0f") for t in threads) + " |")
    md += ["", "## Ablation (20 windows): the composed recipe against its stages and the peers", "",
           f"| setting | recipe | {COLS} | vs composed (20w) |", "|" + "---|" * 11]
    if not ablation:
        md += ["| | ablation not run (--no-ablation): the peers only |" + " |" * 9]
    for setting in composed:
        c20 = composed[setting].get("ppl20")
        for r in [composed[setting], *ablation.get(setting, [])]:
            if "error" in r:
                md.append(f"| {setting} | {r['name']} | error: {r['error']} |")
                continue
            delta = f"{r['ppl20'] - c20:+.2f}" if c20 and r.get("ppl20") else "-"
            name = f"**{r['name']}**" if r is composed[setting] else r["name"]
            md.append(f"| {setting} | {name} | " + " | ".join(row_cells(r)) + f" | {delta} |")
        for peer, ppl in PEERS.get(setting, []):
            delta = f"{ppl - c20:+.2f}" if c20 else "-"
            md.append(f"| {setting} | peer: {peer} | | | {ppl:.2f} | | | | | | {delta} |")
    md += ["", "## Speed: decode and prefill, onnxruntime and llama.cpp", "",
           "| engine | variant | threads | file MB | decode tok/s | decode ms/token | prefill tok/s |",
           "|---|---|---|---|---|---|---|"]
    for s in speed:
        md.append(f"| onnxruntime | {s['variant']} | {s['threads']} | {s['weights_mb']:.1f} | {s['decode_tps']:.0f} | "
                  f"{s['decode_ms']:.2f} | {s['prefill_tps']:.0f} |")
    for r in llama:
        md.append(f"| llama.cpp | {r['type']} | {r['threads']} | {r['file_mb']:.1f} | {r['tg_tps']:.0f} | "
                  f"{1000 / r['tg_tps']:.2f} | {r['pp_tps']:.0f} |")
    return md


def plots(out: Path, model: str, points: list[dict], speed: list[dict], llama: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "error" not in p and p.get("ppl20")]
    fig, ax = plt.subplots(figsize=(8, 5))
    for p in ok:
        composed = p["name"] in COMPOSED
        ax.scatter(p["bits_per_weight"], p["ppl20"], marker="*" if composed else "o", s=120 if composed else 30,
                   color="C3" if composed else "C0")
        ax.annotate(p["name"], (p["bits_per_weight"], p["ppl20"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set(xlabel="bits per weight (every parameter, file)", ylabel="perplexity, ORT, first 20 windows",
           yscale="log", title=f"{model}: perplexity against size (stars: composed recipes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ppl_vs_bits.png", dpi=120)
    plt.close(fig)
    t = max((s["threads"] for s in speed), default=1)
    ppl = {p["name"]: p["ppl20"] for p in ok}
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in speed:
        if s["threads"] == t and s["variant"] in ppl:
            ref = s["variant"] not in COMPOSED
            ax.scatter(s["decode_tps"], ppl[s["variant"]], marker="s" if ref else "*", s=60 if ref else 120,
                       color="C7" if ref else "C3")
            ax.annotate(s["variant"], (s["decode_tps"], ppl[s["variant"]]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for r in llama:
        if r["threads"] == t:
            ax.axvline(r["tg_tps"], color="C2", ls="--", lw=1)
            ax.annotate(f"llama.cpp {r['type']}", (r["tg_tps"], ax.get_ylim()[1]), fontsize=7, rotation=90,
                        va="top", color="C2")
    ax.set(xlabel=f"decode tokens/s, {t} thread(s), batch 1", ylabel="perplexity, ORT, first 20 windows", yscale="log",
           title=f"{model}: accuracy against decode speed (grey: fp32 and MatMulNBits RTN)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ppl_vs_decode.png", dpi=120)
    plt.close(fig)
    return ["ppl_vs_bits.png", "ppl_vs_decode.png"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run on tiny-llama (minutes)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), metavar="SETTING",
                    help=f"only these settings (default all: {', '.join(SETTINGS)})")
    ap.add_argument("--no-ablation", action="store_true", help="composed recipes and references only")
    ap.add_argument("--rerun", action="store_true", help="run every recipe again, even when its folder is current")
    ap.add_argument("--threads", type=int, help="threads of each qpasses run (default: all cores)")
    ap.add_argument("--speed-threads", type=int, nargs="+", default=[1, 2], help="speed thread counts (default 1 2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds (default 5)")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp (its first build takes 10-20 minutes)")
    ap.add_argument("--out", type=Path, help="where results.md and the plots go (default docs/)")
    args = ap.parse_args(argv)
    args.model, args.calib_windows, args.tokens, args.prompt = "smollm2-135m", None, 128, 512
    windows, ablation_windows = 80, 20
    if args.quick:
        args.model, args.calib_windows, args.tokens, args.prompt, args.rounds = "tiny-llama", 8, 8, 64, 1
        args.no_llamacpp, args.speed_threads = True, args.speed_threads[:1]
        windows = ablation_windows = 20  # tiny-llama's windows cost nothing
    args.runs = RUNS.with_name("pipeline-quick") if args.quick else RUNS
    out = args.out or (ROOT / "runs" / "pipeline-quick" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    start = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "load": os.getloadavg()}
    settings = {s: SETTINGS[s] for s in (args.settings or SETTINGS)}

    refs = {n: measure(n, r, sets, windows, args, eval20=True) for n, r, sets in (FP, NBITS)}
    composed = {s: measure(c, c, [], windows, args, eval20=True) for s, (c, _, _) in settings.items()}
    ablation = {} if args.no_ablation else {
        s: [measure(a, a, [], ablation_windows, args) for a in (abl[:1] if args.quick else abl)]
        for s, (_, _, abl) in settings.items()}
    folders = {r["name"]: args.runs / r["name"] for r in [*composed.values(), *refs.values()] if "error" not in r}
    log(f"speed: {', '.join(folders)}; threads {args.speed_threads}, {args.rounds} rounds")
    speed = speeds(folders, args)
    llama, llama_note = ([], "llama.cpp not run (--no-llamacpp)") if args.no_llamacpp else llamacpp(args)

    versions = next((r["versions"] for r in composed.values() if "versions" in r), {})
    cmd = "bench/pipeline.py " + " ".join(argv)
    md = ["# qpasses results on " + args.model, "",
          f"* command: `{cmd}`; {start['date']}, finished after {time.perf_counter() - T0:.0f} s",
          f"* CPU: {generate.header([]).get('cpu', platform.processor())}, {os.cpu_count()} cores; load average at "
          f"start {' '.join(f'{x:.2f}' for x in start['load'])}, "
          f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          "* versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {llama_note}",
          f"* perplexity: {windows} x 512 windows of the evaluation text (20 for the ablation and the peers); "
          "'ppl torch' is the stage-A program, 'ppl ORT' the deployed model.onnx; file size counts every file of "
          "the deployed folder; quantize time is calibration, passes, lowering and export (no evaluation); "
          f"speed: bench/generate.py loop (decode {args.tokens} tokens after a 16-token prompt, "
          f"prefill {args.prompt}), "
          f"median of {args.rounds} interleaved rounds; llama.cpp: llama-bench -p {args.prompt} -n {args.tokens} -r 5.",
          "* peers: measured on the same model, text and windows by earlier hands-on runs "
          "(docs/evaluation.md#peers), not re-run here.", ""]
    md += tables(composed, ablation, refs, speed, llama, windows)
    names = plots(out, args.model,
                  [*composed.values(), *refs.values(), *(r for rows in ablation.values() for r in rows)],
                  speed, llama)
    md += ["", *[f"![{n}]({n})" for n in names], ""]
    text = "\n".join(md)
    (out / "results.md").write_text(text)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("layer_error", "files")}  # noqa: E731
    (out / "results.json").write_text(json.dumps({
        "start": start, "command": cmd, "composed": {s: strip(r) for s, r in composed.items()},
        "references": {n: strip(r) for n, r in refs.items()},
        "ablation": {s: [strip(r) for r in rows] for s, rows in ablation.items()},
        "speed": [{k: v for k, v in s.items() if k != "tokens"} for s in speed], "llamacpp": llama}, indent=1) + "\n")
    print(text)
    log(f"wrote {out / 'results.md'}, results.json and {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
