"""Whole-model generation speed of deployed qpasses folders (SmolLM2-135M) in onnxruntime, batch 1.

For every folder (`qpasses run` output) and thread count this measures, with the folder's KV-cache
step graph `model.onnx` (session from `qpasses.runtime.session`, ORT_ENABLE_ALL plus the
model's own `qpasses.ort` metadata):

* decode: a fixed 16-token prompt goes through the decoder with an empty past, then N single-token
  steps (default 128), greedy (argmax of the last logits); we time the N steps only, so the context
  grows from 16 to 16 + N. Each step feeds the previous step's `present.*` outputs as `past_key_values.*`.
  The loop uses plain `InferenceSession.run` with numpy arrays. `--iobinding` uses ORT IO binding
  instead (KV stays in ORT-owned OrtValues on CPU, only the logits are read back); at this model size
  and context it measured ~1 ms/token slower (121 bind calls per step cost ~0.5 ms of Python, and the
  bound run itself was ~0.6 ms slower), so it is not the default. The table splits each step into the
  time inside onnxruntime's run call and the rest (Python: feeds, argmax).
* prefill: one 512-token prompt (`--prompt`) through the same graph with an empty past;
  tokens/s = prompt tokens / time. The graph computes logits for every position
  (llama-bench's pp only for the last one): with a float lm_head that is ~29 GFLOP of the work.

Rounds are interleaved: each round runs every (threads, variant) pair once, in an order rotated from round
to round, so load from other jobs on this shared machine hits every variant alike. Every session is
warmed up first. Tables report the median over rounds (and the min-max range of ms/token); the generated
text is checked to be the same in every round.

Profile (`--profile NAME`, default the first variant whose name contains "mxfp4-w4a8"; `--no-profile`
to skip): a separate 1-thread session with `enable_profiling` runs the prompt and then `--profile-steps`
decode steps; each node's kernel time is its median over the steps (robust to preemption by other jobs),
summed by op type (µs per token, share, node count, µs per node), next to the median wall time of ORT's
`model_run` (kernels + executor overhead) and the mean wall time of a Python step (run call, feeds,
argmax). Profiling adds a few µs per node: compare the run time without it (last row). The optimized graph is saved
(`optimized_model_filepath`) and its nodes are counted by op type.

`--llamacpp` also runs llama.cpp's llama-bench (bench/llamacpp.py: built once, cached) on its Q4_0 and
MXFP4 GGUF files with the same thread counts and adds tg/pp rows (llama-bench means of 5 runs, not
interleaved with ours; its tg starts from an empty context).

Output: markdown tables on stdout, and bench/results/generate/generate.md + generate.json with a header
(CPU, onnxruntime version, date, command line, load average).

Examples:
  .venv/bin/python bench/generate.py                       # the default folders, threads 1 2, 5 rounds
  .venv/bin/python bench/generate.py --folders mx=runs/bench-mxfp4-w4a8 fp=runs/bench-fp --threads 1 --rounds 3
  .venv/bin/python bench/generate.py --llamacpp
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

import qpasses.runtime
from qpasses.evaluate.decoder import Decoder
from qpasses.runtime.ort import ort_settings

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "results" / "generate"
SCRATCH = Path("/tmp/gen-bench")
DEFAULT_FOLDERS = {
    "ours MXFP4 W4A8": "runs/bench-mxfp4-w4a8",
    "ours INT4 W4A8": "runs/bench-int4-w4a8",
    "ours MXFP4 W4A16": "runs/bench-mxfp4-w4a16",
    "MatMulNBits INT4 W4A8": "runs/bench-int4-w4a8-nbits",
    "ours MXFP4 W4A16 full (MXFP4 lm_head)": "runs/bench-mxfp4-w4a16-full",
    "fp32": "runs/bench-fp",
}
TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
        "movable metal type, oil-based ink and a wooden screw press into a system that could produce books "
        "faster and more cheaply than ever before. Within fifty years, presses were running in more than two "
        "hundred cities across Europe, and the number of books in circulation grew from thousands to millions. ")
DECODE_PROMPT = 16
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def speed(folders: dict[str, Path], prompts, args) -> list[dict]:
    """Interleaved rounds over all (threads, variant) pairs; one row per pair with medians."""
    decode_prompt, prefill_prompt = prompts
    pairs = [(t, name) for t in args.threads for name in folders]
    decoders = {}
    for t, name in pairs:
        log(f"session {name} ({folders[name]}), {t} thread(s); warm-up")
        dec = Decoder(qpasses.runtime.session(folders[name] / "model.onnx", threads=t), args.iobinding)
        dec.generate(decode_prompt, 8)
        dec.prefill(prefill_prompt)
        decoders[t, name] = dec
    samples = defaultdict(lambda: {"decode_s": [], "ort_s": [], "prefill_s": [], "tokens": None})
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}, load {os.getloadavg()[0]:.2f}")
        for t, name in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            s, dec = samples[t, name], decoders[t, name]
            tokens, seconds = dec.generate(decode_prompt, args.tokens)
            if s["tokens"] not in (None, tokens):
                log(f"warning: {name} {t}T generated different tokens in round {r + 1}")
            s["tokens"] = tokens
            s["decode_s"].append(seconds / args.tokens)
            s["ort_s"].append(dec.ort_seconds / args.tokens)
            s["prefill_s"].append(dec.prefill(prefill_prompt))
    rows = []
    for t, name in pairs:
        s = samples[t, name]
        dec_ms = statistics.median(s["decode_s"]) * 1e3
        pre_ms = statistics.median(s["prefill_s"]) * 1e3
        rows.append({"variant": name, "folder": str(folders[name]), "threads": t,
                     "weights_mb": round((folders[name] / "model.onnx.data").stat().st_size / 1e6, 1),
                     "decode_ms": dec_ms, "decode_tps": 1e3 / dec_ms, "ort_ms": statistics.median(s["ort_s"]) * 1e3,
                     "decode_ms_min": min(s["decode_s"]) * 1e3,
                     "decode_ms_max": max(s["decode_s"]) * 1e3, "prefill_ms": pre_ms,
                     "prefill_tps": len(prefill_prompt) / pre_ms * 1e3,
                     "decode_ms_rounds": [x * 1e3 for x in s["decode_s"]],
                     "prefill_ms_rounds": [x * 1e3 for x in s["prefill_s"]], "tokens": s["tokens"]})
    return rows


def profile(folder: Path, decode_prompt: list[int], steps: int) -> dict:
    """ORT profile of `steps` decode steps at 1 thread, summed by op type; node counts of the optimized graph."""
    path = folder / "model.onnx"
    SCRATCH.mkdir(parents=True, exist_ok=True)

    def options() -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.register_custom_ops_library(str(qpasses.runtime.library_path()))
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = 1
        for key, value in ort_settings(path).config.items():
            so.add_session_config_entry(key, value)
        return so

    so = options()  # a separate session writes the optimized graph, so the profiled one is the plain kind
    so.optimized_model_filepath = str(SCRATCH / f"{folder.name}.optimized.onnx")
    so.log_severity_level = 3  # no warning that the saved graph is specific to this machine
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                f"{folder.name}.optimized.data")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    optimized = defaultdict(int)
    for node in graph.node:
        optimized[node.op_type] += 1

    so = options()
    so.enable_profiling = True
    so.profile_file_prefix = str(SCRATCH / f"profile-{folder.name}")
    dec = Decoder(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
    dec.generate(decode_prompt, 4)  # warm-up, dropped below
    _, wall = dec.generate(decode_prompt, steps)
    events = json.loads(Path(dec.sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-steps:]
    lo, hi = runs[0]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    durs = defaultdict(list)  # (op, node) -> kernel µs of each step; medians damp preemption spikes
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and lo <= e["ts"] <= hi:
            durs[e["args"]["op_name"], e["name"].removesuffix("_kernel_time")].append(e["dur"])
    by_node = {key: statistics.median(d) for key, d in durs.items()}
    by_op, nodes = defaultdict(float), defaultdict(int)
    for (op, _), us in by_node.items():
        by_op[op] += us
        nodes[op] += 1
    ops = [{"op": op, "us_per_token": us, "nodes": nodes[op], "us_per_node": us / nodes[op]}
           for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])]
    return {"folder": str(folder), "steps": steps, "ops": ops, "kernel_us": sum(by_op.values()),
            "model_run_us": statistics.median(e["dur"] for e in runs), "step_wall_us": wall / steps * 1e6,
            "top_nodes": sorted(by_node.items(), key=lambda kv: -kv[1])[:6], "nodes_executed": len(by_node),
            "optimized_nodes": dict(optimized), "optimized_total": len(graph.node),
            "original_total": len(onnx.load(path, load_external_data=False).graph.node)}


def llamacpp_rows(threads: list[int]) -> list[dict]:
    spec = importlib.util.spec_from_file_location("llamacpp", ROOT / "bench" / "llamacpp.py")
    mod = sys.modules["llamacpp"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(mod)
    tools = mod.ensure_llamacpp()
    rows = mod.bench(tools, mod.ensure_gguf_files(tools, ("q4_0", "mxfp4")), threads=tuple(threads))
    return [{"variant": f"llama.cpp {r['type'].upper()}", "threads": r["threads"], "weights_mb": r["file_mb"],
             "decode_ms": 1e3 / r["tg_tps"], "decode_tps": r["tg_tps"], "prefill_ms": r["prompt"] / r["pp_tps"] * 1e3,
             "prefill_tps": r["pp_tps"], "llamacpp": r} for r in rows]


def speed_table(rows: list[dict], tokens: int, prompt: int) -> str:
    lines = [(f"| threads | variant | weights MB | decode ms/token | decode tok/s | ms/token range | in ORT run "
             f"ms/token | prefill {prompt} ms | prefill tok/s |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["threads"]):
        ours = "decode_ms_min" in r
        rng = f"{r['decode_ms_min']:.2f}-{r['decode_ms_max']:.2f}" if ours else "(llama-bench mean)"
        ort_ms = f"{r['ort_ms']:.2f}" if ours else ""
        lines.append(f"| {r['threads']} | {r['variant']} | {r['weights_mb']:.0f} | {r['decode_ms']:.2f} | "
                     f"{r['decode_tps']:.0f} | {rng} | {ort_ms} | {r['prefill_ms']:.0f} | {r['prefill_tps']:.0f} |")
    return "\n".join(lines)


def profile_tables(p: dict) -> str:
    lines = ["| op type | nodes | µs/token (sum of per-node medians) | share of kernel time | µs/node |",
             "|---|---|---|---|---|"]
    for o in p["ops"]:
        lines.append(f"| {o['op']} | {o['nodes']} | {o['us_per_token']:.0f} | "
                     f"{o['us_per_token'] / p['kernel_us']:.1%} | {o['us_per_node']:.1f} |")
    lines += [(f"| **all kernels** | {p['nodes_executed']} | {p['kernel_us']:.0f} | 100% | "
              f"{p['kernel_us'] / p['nodes_executed']:.1f} |"),
              f"| ORT model_run (kernels + executor; median) | | {p['model_run_us']:.0f} | | |",
              f"| of which outside kernels (executor, profiler) | | {p['model_run_us'] - p['kernel_us']:.0f} | | |",
              f"| Python step wall (run call, feeds, argmax; mean) | | {p['step_wall_us']:.0f} | | |",
              *([f"| ORT run call without the profiler (speed table, 1 thread) | | {p['unprofiled_us']:.0f} | | |"]
                if p.get("unprofiled_us") else []), "",
              "Slowest single nodes: " + "; ".join(f"{n} ({op}) {us:.0f} µs" for (op, n), us in p["top_nodes"]), "",
              f"Optimized graph: {p['optimized_total']} nodes (model.onnx: {p['original_total']}).", "",
              "| op type (optimized graph) | nodes |", "|---|---|"]
    lines += [f"| {op} | {n} |" for op, n in sorted(p["optimized_nodes"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def header(argv: list[str]) -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "onnxruntime": ort.__version__, "command": " ".join(["bench/generate.py", *argv]),
            "loadavg_start": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folders", nargs="+", metavar="NAME=PATH",
                    default=[f"{k}={v}" for k, v in DEFAULT_FOLDERS.items()],
                    help="deployed folders to compare (default: " + ", ".join(DEFAULT_FOLDERS.values()) + ")")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default 1 2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    ap.add_argument("--tokens", type=int, default=128, help="decode steps timed per round (default 128)")
    ap.add_argument("--prompt", type=int, default=512, help="prefill prompt length in tokens (default 512)")
    ap.add_argument("--iobinding", action="store_true", help="decode with IO binding instead of session.run")
    ap.add_argument("--profile", metavar="NAME", help="variant to profile (default: the first with 'mxfp4-w4a8' "
                    "or 'MXFP4 W4A8' in its name or folder)")
    ap.add_argument("--profile-steps", type=int, default=20, help="decode steps profiled (default 20)")
    ap.add_argument("--no-profile", action="store_true", help="skip the ORT profile")
    ap.add_argument("--llamacpp", action="store_true", help="add llama.cpp Q4_0 / MXFP4 rows (bench/llamacpp.py)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    folders = {}
    for spec in args.folders:
        name, sep, path = spec.partition("=")
        folder = Path(path) if Path(path).is_absolute() else ROOT / path
        if not sep or not (folder / "model.onnx").is_file():
            ap.error(f"--folders {spec!r}: want NAME=PATH with PATH/model.onnx (make it with qpasses run)")
        folders[name] = folder
    if min(*args.threads, args.rounds, args.tokens, args.prompt, args.profile_steps) < 1:
        ap.error("--threads, --rounds, --tokens, --prompt and --profile-steps must be at least 1")

    info = header(argv)
    tok = Tokenizer.from_file(str(next(iter(folders.values())) / "tokenizer.json"))
    ids = tok.encode(TEXT).ids
    ids = (ids * (args.prompt // len(ids) + 1))[:max(args.prompt, DECODE_PROMPT)]
    prompts = (ids[:DECODE_PROMPT], ids[:args.prompt])
    rows = speed(folders, prompts, args)
    texts = {r["variant"]: tok.decode(r["tokens"]) for r in rows if r["threads"] == args.threads[0]}
    prof = None
    if not args.no_profile:
        pick = args.profile or next((n for n, f in folders.items() if "mxfp4-w4a8" in f"{n} {f}".lower()
                                     or "mxfp4 w4a8" in n.lower()), next(iter(folders)))
        if pick not in folders:
            ap.error(f"--profile {pick!r} is not one of {', '.join(folders)}")
        log(f"profiling {pick} ({args.profile_steps} decode steps, 1 thread)")
        prof = {"variant": pick, **profile(folders[pick], prompts[0], args.profile_steps)}
        prof["unprofiled_us"] = next((r["ort_ms"] * 1e3 for r in rows if (r["variant"], r["threads"]) == (pick, 1)),
                                     None)
    llama_note = ""
    if args.llamacpp:
        try:
            log("llama.cpp rows (bench/llamacpp.py)")
            rows += llamacpp_rows(args.threads)
        except Exception as e:  # noqa: BLE001  (a missing or broken helper must not lose our numbers)
            llama_note = f"llama.cpp rows skipped: {type(e).__name__}: {e}"
            log(llama_note)
    info["loadavg_end"] = list(os.getloadavg())

    loop = "IO binding (KV stays in OrtValues, logits read back)" if args.iobinding else "session.run with numpy"
    md = [f"# Generation speed ({info['date']})", "",
          (f"* CPU: {info['cpu']}, {info['cores']} cores; onnxruntime {info['onnxruntime']}; "
          f"load average at start {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}, at end "
          f"{' '.join(f'{x:.2f}' for x in info['loadavg_end'])}"),
          f"* Command: `{info['command']}`",
          (f"* Decode: {DECODE_PROMPT}-token prompt, then {args.tokens} greedy single-token steps through "
          f"model.onnx ({loop}); median of {args.rounds} interleaved rounds. Prefill: {args.prompt} tokens "
          "through model.onnx with an empty past."), "",
          speed_table(rows, args.tokens, args.prompt)]
    if llama_note:
        md += ["", llama_note]
    md += ["", "Generated text (first thread count, every round identical unless warned):", ""]
    md += [f"* {name}: {text[:160]!r}" for name, text in texts.items()]
    if prof:
        md += ["", (f"## Where the decode time goes: {prof['variant']} ({prof['folder']}), 1 thread, ORT profiler "
               f"over {prof['steps']} decode steps"), "", profile_tables(prof)]
    text = "\n".join(md) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generate.md").write_text(text)
    (args.out / "generate.json").write_text(json.dumps({**info, "rows": rows, "texts": texts, "profile": prof},
                                                       indent=1) + "\n")
    log(f"wrote {args.out / 'generate.md'} and generate.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
