"""One `qpasses run` in a child process, watched from outside: its report, the child's resident
memory sampled twice a second, and when each pass line was printed (bench/scale.py and
bench/quantize_profile.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = ("weight_count", "quantize_seconds", "total_seconds", "peak_rss_bytes", "onnx_bytes", "fp32_onnx_bytes",
               "passes", "profile", "threads", "ppl_fp", "ppl_stage_a", "ppl_quant", "eval_windows")


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(ln for ln in f if ln.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return None


def run_qpasses(out: Path, args: list[str], tag: str) -> dict:
    """`qpasses run --out OUT --force ARGS` -> {args, load_average (1 min, at the start), wall_seconds,
    cpu_seconds (the child's user + system time, all threads), curve [(s, bytes)], marks [(s, pass)],
    and the report's REPORT_KEYS}. Exits on failure."""
    cmd = [sys.executable, "-m", "qpasses.cli.main", "run", "--out", str(out), "--force", *args]
    print(f"{tag} {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # stderr (progress bars) passes through
    curve, marks, done = [], [], threading.Event()

    def sample():
        while not done.is_set():
            rss = rss_bytes(child.pid)
            if rss is not None:
                curve.append((round(time.perf_counter() - t0, 2), rss))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in child.stdout:
        sys.stdout.write(line)
        if line.startswith("  ") and ":" in line:  # the pass manager's per-pass lines
            marks.append((round(time.perf_counter() - t0, 2), line.strip().split(":")[0]))
    code = child.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done.set()
    sampler.join()
    if code:
        raise SystemExit(f"{tag} `qpasses run` failed with exit code {code}; its messages are above")
    report = json.loads((out / "report.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"args": args, "load_average": load, "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(cpu, 1), "curve": curve, "marks": marks, **{k: report.get(k) for k in REPORT_KEYS}}
