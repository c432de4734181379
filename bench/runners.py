"""A deployed folder through the ecosystem's runners, side by side: do they run it as written, do they
generate the same greedy tokens, and how fast (docs/runners.md).

    .venv/bin/python bench/runners.py runs/smollm2-135m-int4-w4a16 runs/smollm2-135m-mxfp4-w4a16 ...

Runners, each reading the folder unmodified:
- qpasses: `qpasses generate`'s Decoder (onnxruntime session.run with numpy, our Python loop);
- onnxruntime-genai: `og.Model(folder)` with the folder's genai_config.json (its KV buffer shared
  where the compiler wrote so), genai's own generation loop;
- optimum: `ORTModelForCausalLM.from_pretrained(folder, session_options=...)` + `generate`, in its
  own cached virtualenv (optimum-onnx pins transformers < 4.58; tests/runner_venv.py);
- C++: examples/cpp/generate (onnxruntime C++ API, no Python).

Protocol: the folder's chat template around one fixed question gives the prompt ids; each runner
generates NEW greedy tokens (`--tokens`) at `--threads` intra-op threads; tokens/s counts the new
tokens after the first (the prefill's token is not timed), as the runner itself reports it or as
timed around its loop. Rounds are interleaved (every runner once per round, the order rotated) and
the table gives the median. "same tokens" compares with qpasses' tokens up to the shorter length
(a runner that stops at the end-of-turn token generates fewer).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "runners"
QUESTION = "Write a short story about a robot who learns to paint."


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prompt_ids(folder: Path) -> list[int]:
    from qpasses.evaluate.decoder import Chat

    return Chat(folder).prompt_ids(QUESTION, chat=True)


def run_qpasses(folder: Path, ids: list[int], new: int, threads: int) -> tuple[list[int], float]:
    from qpasses.evaluate.decoder import Decoder
    from qpasses.runtime.ort import session

    tokens, seconds = Decoder(session(folder / "model.onnx", threads=threads)).generate(ids, new)
    return tokens, (len(tokens) - 1) / seconds


def run_genai(folder: Path, ids: list[int], new: int, threads: int) -> tuple[list[int], float]:
    import onnxruntime_genai as og

    config = og.Config(str(folder))  # an overlay in memory sets the threads: the folder stays as written
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens, start = [], None
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        start = start or time.perf_counter()
    return tokens, (len(tokens) - 1) / max(time.perf_counter() - start, 1e-9)


def run_cpp(folder: Path, ids: list[int], new: int, threads: int) -> tuple[list[int], float]:
    program = load(ROOT / "examples" / "cpp" / "build.py", "cpp_build").build_generate()
    proc = subprocess.run([str(program), "--threads", str(threads), str(folder), str(new), *map(str, ids)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    speed = proc.stderr.rsplit("(", 1)[1].split(" tokens/s")[0]
    return [int(t) for t in proc.stdout.split()], float(speed)


def run_optimum(folder: Path, ids: list[int], new: int, threads: int) -> tuple[list[int], float]:
    venv = load(ROOT / "tests" / "runner_venv.py", "runner_venv")
    out = venv.run_optimum(folder, ids, new, threads)
    return out["tokens"], out["tokens_per_s"]


RUNNERS = {"qpasses": run_qpasses, "onnxruntime-genai": run_genai, "optimum": run_optimum, "C++": run_cpp}


def measure(folder: Path, rounds: int, new: int, threads: int) -> list[dict]:
    ids = prompt_ids(folder)
    results = {name: {"speeds": [], "tokens": None, "error": None} for name in RUNNERS}
    for r in range(rounds):
        names = list(RUNNERS)
        for name in names[r % len(names):] + names[:r % len(names)]:
            slot = results[name]
            if slot["error"]:
                continue
            try:
                tokens, speed = RUNNERS[name](folder, ids, new, threads)
            except Exception as e:  # noqa: BLE001  (a runner that fails is a row saying why)
                slot["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                continue
            slot["tokens"] = slot["tokens"] or tokens
            slot["speeds"].append(speed)
            print(f"  {folder.name} {name} round {r + 1}: {speed:.1f} tok/s", file=sys.stderr)
    reference = results["qpasses"]["tokens"] or []
    rows = []
    for name, slot in results.items():
        tokens = slot["tokens"] or []
        n = min(len(tokens), len(reference))
        rows.append({"folder": folder.name, "runner": name, "error": slot["error"], "new_tokens": len(tokens),
                     "same_tokens": bool(tokens) and tokens[:n] == reference[:n],
                     "tokens_per_s": statistics.median(slot["speeds"]) if slot["speeds"] else None,
                     "spread": [min(slot["speeds"]), max(slot["speeds"])] if slot["speeds"] else None})
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| folder | runner | runs as written | same greedy tokens as qpasses | tokens/s (median, min-max) |",
             "|---|---|---|---|---|"]
    for r in rows:
        ok = "no: " + r["error"] if r["error"] else "yes"
        same = "" if r["error"] else ("yes" if r["same_tokens"] else "**no**") + f" ({r['new_tokens']} tokens)"
        low, high = r["spread"] or (0, 0)
        speed = "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f} ({low:.1f}-{high:.1f})"
        lines.append(f"| {r['folder']} | {r['runner']} | {ok} | {same} | {speed} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="deployed folders (qpasses run output)")
    ap.add_argument("--tokens", type=int, default=64, help="new greedy tokens per run (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every runner (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    ap.add_argument("--out", type=Path, default=OUT, help="where the table is saved (default %(default)s)")
    args = ap.parse_args(argv)
    for folder in args.folders:
        if not (folder / "model.onnx").is_file():
            ap.error(f"{folder} has no model.onnx: make it with qpasses run")
    for name in set(RUNNERS) - set(args.runners) - {"qpasses"}:
        RUNNERS.pop(name)
    load_start = os.getloadavg()[0]
    rows = [row for folder in args.folders for row in measure(folder, args.rounds, args.tokens, args.threads)]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import onnxruntime

    md = [f"# Runners ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
          f"* `{' '.join(['bench/runners.py', *sys.argv[1:]] if argv is None else argv)}`",
          f"* CPU: {cpu}; {args.threads} thread(s); onnxruntime {onnxruntime.__version__}; 1-minute load average "
          f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
          f"* prompt: the chat template around {QUESTION!r}; {args.tokens} greedy new tokens; median of "
          f"{args.rounds} interleaved rounds", "", *table(rows), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runners.md").write_text("\n".join(md))
    (args.out / "runners.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
