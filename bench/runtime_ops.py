"""Benchmark the qpasses custom ops (MatMulMXFP4, MatMulInt4) against ORT's MatMulNBits and fp32 MatMul
on a SmolLM2-135M-shaped linear stack, decode (M=1) and prefill (M=512).

Method (the table is described in docs/runtime.md#speed-of-the-ops):

* Graph. 30 layers x {q 576x576, k 576x192, v 576x192, o 576x576, gate 576x1536, up 576x1536,
  down 1536x576} (K x N), distinct random weights per layer, chained x -> q -> o -> gate/up -> Mul -> down ->
  next layer; k and v are extra graph outputs so ORT cannot prune them. Decode adds the tied lm_head
  576x49152. Like a pre-norm transformer, each layer reads LayerNormalization(x) and adds its down output
  to the residual x (one LayerNormalization before lm_head too): these [M, 576] ops cost next to nothing
  and keep the activations O(1) (a bare chain with gate*up blows up or underflows to denormals, and it is
  chaotic, so quantization error would decorrelate the output completely after 30 layers). One ONNX graph per
  variant, same weights for all variants (INT4 bytes shared by our MatMulInt4 and com.microsoft.MatMulNBits,
  MXFP4 bytes by MatMulMXFP4).
* Cold weights. The 4-bit stack is ~70-85 MB, the fp32 one ~540 MB, far above the 32 MB L3, so every
  token streams the weights from DRAM: decode is a bandwidth test.
* Timing. Sessions use ORT_ENABLE_ALL and intra_op_num_threads = T (spin-waiting on, ORT's default,
  unless --no-spin). Every session is warmed up first.
  Then R interleaved rounds: for each round, for each variant, one untimed settling run (decode only)
  and `runs` timed runs; the per-run time of the round is recorded. Noise on this shared VM thus hits
  every variant alike. We report the median over rounds (and the min).
* Roofline. A bandwidth probe in the same process reads a 1 GiB float32 array (np.max, which runs a
  SIMD read-only loop and releases the GIL) with T Python threads, each on its own slice; best of 5.
  Decode roofline = weight bytes per token / probe bandwidth. "weight MB" counts what a token streams:
  packed nibbles + scales (E8M0 bytes for MXFP4, fp32 scales for INT4), or fp32 weights, plus a low-rank
  variant's L, R (fp16; every linear its own L here, while optimize_weights gives siblings one shared L).
* Ratios. Each variant vs MatMulNBits accuracy_level 4 (int8 activations) and 0 (fp32 activations);
  targets: decode W4A8 <= 0.6x acc4, W4A16 <= 1.0x acc0, W4A4 <= 1.0x W4A8 of the same op; prefill
  <= 1.0x the faster MatMulNBits level; a low-rank branch (rank 16, 32: SRR / QER) <= 1.15x the same op
  without it. "rel.diff" = ||y - y_fp32|| / ||y_fp32|| of the final output,
  a sanity check that a variant computes something sensible (it includes the quantization error).

Example:  .venv/bin/python bench/runtime_ops.py --quick
          .venv/bin/python bench/runtime_ops.py --threads 1 2 --rounds 9
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qpasses.formats import WeightFormat, pack_matmulnbits, pack_mxfp4, quantize_weight
from qpasses.runtime import DOMAIN, DOMAIN_VERSION, session
from qpasses.runtime.ops import INPUTS, OpConfig

HIDDEN, VOCAB, LAYERS, PREFILL_M = 576, 49152, 30, 512
LAYER_SHAPES = (("q", 576, 576), ("k", 576, 192), ("v", 576, 192), ("o", 576, 576),
                ("gate", 576, 1536), ("up", 576, 1536), ("down", 1536, 576))
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Variant:
    name: str          # id for --variants
    label: str         # table label
    kind: str          # "mxfp4" | "int4" (ours), "nbits" (com.microsoft.MatMulNBits), "fp32" (MatMul)
    act_bits: int = 0  # ours: 0 W4A16, 8 W4A8, 4 W4A4; nbits: accuracy_level
    act_format: str = "int"
    rank: int = 0      # ours: an fp16 low-rank branch (x L) R fused into the op (SRR / QER)


VARIANTS = (
    Variant("mxfp4-a16", "ours MXFP4 W4A16", "mxfp4", 0),
    Variant("mxfp4-a8", "ours MXFP4 W4A8", "mxfp4", 8),
    Variant("mxfp4-a4mx", "ours MXFP4 W4A4 mxfp", "mxfp4", 4, "mxfp"),
    Variant("mxfp4-a4int", "ours MXFP4 W4A4 int", "mxfp4", 4, "int"),
    Variant("int4-a16", "ours INT4 W4A16", "int4", 0),
    Variant("int4-a8", "ours INT4 W4A8", "int4", 8),
    Variant("int4-a4", "ours INT4 W4A4 int", "int4", 4, "int"),
    Variant("mxfp4-a16-r16", "ours MXFP4 W4A16 + rank 16", "mxfp4", 0, rank=16),
    Variant("mxfp4-a16-r32", "ours MXFP4 W4A16 + rank 32", "mxfp4", 0, rank=32),
    Variant("mxfp4-a4mx-r32", "ours MXFP4 W4A4 mxfp + rank 32", "mxfp4", 4, "mxfp", rank=32),
    Variant("int4-a16-r16", "ours INT4 W4A16 + rank 16", "int4", 0, rank=16),
    Variant("int4-a16-r32", "ours INT4 W4A16 + rank 32", "int4", 0, rank=32),
    Variant("nbits-acc4", "MatMulNBits acc4", "nbits", 4),
    Variant("nbits-acc0", "MatMulNBits acc0", "nbits", 0),
    Variant("fp32", "fp32 MatMul", "fp32"),
)


def linears(layers: int, lm_head: bool) -> list[tuple[str, int, int]]:
    out = [(f"l{i}.{n}", k, n_) for i in range(layers) for n, k, n_ in LAYER_SHAPES]
    return out + ([("lm_head", HIDDEN, VOCAB)] if lm_head else [])


def make_weights(specs, kinds: set[str], rank: int = 0, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per linear: fp32 W^T [K, N], MXFP4 (B, E) and INT4 g32 (B, scales [N, K/32]) as needed, and the
    largest low-rank branch (fp16 L [K, rank], R [rank, N]; a variant of rank r uses the first r)."""
    rng, out = np.random.default_rng(seed), {}
    for name, k, n in specs:
        w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
        d = {}
        if "fp32" in kinds:
            d["W"] = np.ascontiguousarray(w.T)
        if "mxfp4" in kinds:
            d["B_mx"], d["E"] = pack_mxfp4(quantize_weight(w, WeightFormat("mxfp4", 32)))
        if kinds & {"int4", "nbits"}:
            p = pack_matmulnbits(quantize_weight(w, WeightFormat("int4", 32)))
            d["B_i4"], d["scales"] = p["B"], p["scales"].reshape(n, -1)
        if rank:  # small next to W, as SRR's branch is (R carries sqrt(sigma), L the rest)
            d["L"] = (rng.standard_normal((k, rank), dtype=np.float32) * 0.1).astype(np.float16)
            d["R"] = (rng.standard_normal((rank, n), dtype=np.float32) * 0.1 / np.sqrt(k)).astype(np.float16)
        out[name] = d
    return out


def weight_bytes(v: Variant, weights, specs) -> int:
    keys = {"fp32": ("W",), "mxfp4": ("B_mx", "E")}.get(v.kind, ("B_i4", "scales"))
    lowrank = 2 * v.rank * sum(k + n for name, k, n in specs if name != "lm_head")  # fp16, kept so by the op
    return sum(weights[name][key].nbytes for name, _, _ in specs for key in keys) + lowrank


def linear_node(v: Variant, x: str, name: str, k: int, n: int, w: dict, inits: list) -> tuple[onnx.NodeProto, str]:
    """One linear layer of variant v: its node (initializers appended to inits) and output name."""
    y = f"{name}.y"

    def init(key, arr):
        inits.append(numpy_helper.from_array(arr, f"{name}.{key}"))
        return f"{name}.{key}"

    if v.kind == "fp32":
        return helper.make_node("MatMul", [x, init("W", w["W"])], [y]), y
    if v.kind == "nbits":
        return helper.make_node("MatMulNBits", [x, init("B", w["B_i4"]), init("scales", w["scales"].reshape(-1))],
                                [y], domain="com.microsoft", K=k, N=n, bits=4, block_size=32,
                                accuracy_level=v.act_bits), y
    op = "MatMulMXFP4" if v.kind == "mxfp4" else "MatMulInt4"
    attrs = OpConfig(op, k, n, act_bits=v.act_bits, act_format=v.act_format, block_size=32).attributes()
    ins = [init("B", w["B_mx"]), init("E", w["E"])] if v.kind == "mxfp4" else \
        [init("B", w["B_i4"]), init("scales", w["scales"])]
    if v.rank and name != "lm_head":  # the recipes give layers a branch, not the lm_head
        ins += [""] * (INPUTS[op].index("L") - 1 - len(ins))
        ins += [init(f"L{v.rank}", np.ascontiguousarray(w["L"][:, :v.rank])),
                init(f"R{v.rank}", np.ascontiguousarray(w["R"][:v.rank]))]
    return helper.make_node(op, [x, *ins], [y], domain=DOMAIN, **attrs), y


def build_model(v: Variant, weights, layers: int, m: int, lm_head: bool) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.ones(HIDDEN, np.float32), "ln.gamma")]
    nodes, outputs, x = [], [], "x"

    def lin(inp, name, k, n):
        node, y = linear_node(v, inp, name, k, n, weights[name], inits)
        nodes.append(node)
        return y

    def norm(inp, name):
        nodes.append(helper.make_node("LayerNormalization", [inp, "ln.gamma"], [name], axis=-1, epsilon=1e-5))
        return name

    for i in range(layers):
        h = norm(x, f"l{i}.h")
        outputs += [lin(h, f"l{i}.k", 576, 192), lin(h, f"l{i}.v", 576, 192)]
        o = lin(lin(h, f"l{i}.q", 576, 576), f"l{i}.o", 576, 576)
        g, u = lin(o, f"l{i}.gate", 576, 1536), lin(o, f"l{i}.up", 576, 1536)
        nodes.append(helper.make_node("Mul", [g, u], [f"l{i}.m"]))
        nodes.append(helper.make_node("Add", [x, lin(f"l{i}.m", f"l{i}.down", 1536, 576)], [f"l{i}.x"]))
        x = f"l{i}.x"
    if lm_head:
        x = lin(norm(x, "final.h"), "lm_head", HIDDEN, VOCAB)
    graph = helper.make_graph(
        nodes, f"stack-{v.name}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, HIDDEN])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in [x, *outputs]], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(
        "com.microsoft", 1), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    model.ir_version = 10
    return model


def bandwidth_probe(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """Read-only DRAM bandwidth in GB/s: np.max over a 1 GiB float32 array split across threads; best of reps."""
    a = np.ones(int(gib * 2**30) // 4, np.float32)
    parts, best = np.array_split(a, threads), float("inf")
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(reps):
            t = time.perf_counter()
            list(ex.map(np.max, parts))
            best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def measure(sessions: dict, feed: dict, rounds: int, runs: int, settle: bool) -> dict[str, list[float]]:
    """Interleaved rounds; per variant and round the mean seconds per run."""
    times = {name: [] for name in sessions}
    for r in range(rounds):
        for name, sess in sessions.items():
            if settle:
                sess.run(None, feed)
            t = time.perf_counter()
            for _ in range(runs):
                sess.run(None, feed)
            times[name].append((time.perf_counter() - t) / runs)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.1f}" for n in sessions) + " ms")
    return times


def bench_mode(mode: str, variants, weights, args, probes, tmp: Path) -> tuple[dict, dict]:
    """Build the graphs of one mode, then time them at every thread count. Returns (results, errors)."""
    decode = mode == "decode"
    m, specs = (1 if decode else PREFILL_M), linears(args.layers, lm_head=decode)
    feed = {"x": np.random.default_rng(1).standard_normal((m, HIDDEN), dtype=np.float32)}
    paths, errors, results = {}, {}, {}
    for v in variants:
        model = build_model(v, weights, args.layers, m, decode)
        paths[v.name] = tmp / f"{mode}-{v.name}.onnx"
        external = model.ByteSize() > 1.8e9
        onnx.save_model(model, paths[v.name], save_as_external_data=external, location=f"{mode}-{v.name}.data")
        log(f"{mode}: saved {v.name} ({paths[v.name].stat().st_size / 1e6:.0f} MB"
            f"{', external data' if external else ''})")
        del model
    for threads in args.threads:
        sessions, ref = {}, None
        for v in variants:
            try:
                sess = session(paths[v.name], threads=threads, optimization="all", extra_config=(
                    {"session.intra_op.allow_spinning": "0"} if args.no_spin else None))
                y = sess.run(None, feed)[0]
                for _ in range(2 if decode else 1):
                    sess.run(None, feed)
                sessions[v.name] = (sess, y)
            except Exception as e:  # noqa: BLE001  (report and go on with the other variants)
                errors[f"{mode}/{threads}T/{v.name}"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
                log(f"{mode} {threads}T: {v.name} FAILED: {errors[f'{mode}/{threads}T/{v.name}']}")
        if "fp32" in sessions:
            ref = sessions["fp32"][1]
        log(f"{mode} {threads}T: {len(sessions)} sessions warm; timing")
        times = measure({n: s for n, (s, _) in sessions.items()}, feed,
                        args.rounds if decode else args.prefill_rounds, args.runs if decode else 1, settle=decode)
        res = {}
        for v in variants:
            if v.name not in sessions:
                continue
            y, wb = sessions[v.name][1], weight_bytes(v, weights, specs)
            med, best = statistics.median(times[v.name]), min(times[v.name])
            res[v.name] = {
                "label": v.label, "weight_bytes": wb, "times_s": times[v.name], "median_s": med, "min_s": best,
                "tokens_per_s": m / med, "GBps": wb / med / 1e9,
                "GFLOPps": 2 * m * sum(k * n for _, k, n in specs) / med / 1e9,
                "finite": bool(np.isfinite(y).all()),
                "rel_diff_fp32": None if ref is None else float(np.linalg.norm(y - ref) / np.linalg.norm(ref)),
            }
            if decode:
                res[v.name]["roofline_s"] = wb / (probes[threads] * 1e9)
        for r in res.values():
            for lvl in ("acc4", "acc0"):
                base = res.get(f"nbits-{lvl}")
                r[f"x_{lvl}"] = r["median_s"] / base["median_s"] if base else None
        results[threads] = res
        del sessions
    for p in paths.values():
        p.unlink()
    return results, errors


def fmt(x, spec=".2f", scale=1.0):
    return "—" if x is None else format(x * scale, spec)


def tables(mode: str, results: dict, probes: dict) -> list[str]:
    out = []
    for threads, res in results.items():
        if mode == "decode":
            out += [f"### Decode, M = 1, {threads} thread(s) (probe {probes[threads]:.1f} GB/s)", "",
                    ("| variant | weight MB | ms/token (median) | min | tok/s | GB/s | roofline ms | roofline/time "
                     "| x acc4 | x acc0 | rel.diff vs fp32 |"), "|" + "---|" * 11]
        else:
            out += [f"### Prefill, M = {PREFILL_M}, {threads} thread(s)", "",
                    ("| variant | weight MB | ms/prefill (median) | min | tok/s | GFLOP/s | x acc4 | x acc0 "
                     "| rel.diff vs fp32 |"), "|" + "---|" * 9]
        for r in res.values():
            row = [r["label"], fmt(r["weight_bytes"], ".1f", 1e-6), fmt(r["median_s"], ".2f" if mode == "decode"
                   else ".0f", 1e3), fmt(r["min_s"], ".2f" if mode == "decode" else ".0f", 1e3),
                   fmt(r["tokens_per_s"], ".0f")]
            if mode == "decode":
                row += [fmt(r["GBps"], ".1f"), fmt(r["roofline_s"], ".2f", 1e3),
                        f"{r['roofline_s'] / r['median_s']:.0%}"]
            else:
                row += [fmt(r["GFLOPps"], ".0f")]
            row += [fmt(r["x_acc4"]), fmt(r["x_acc0"]),
                    ("NaN/inf! " if not r["finite"] else "") + fmt(r["rel_diff_fp32"], ".3f")]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out


def targets(all_results: dict) -> list[str]:
    """The checks of the brief, one row each: value, target, verdict."""
    rows = []

    def check(mode, t, what, num, den, limit):
        res = all_results.get(mode, {}).get(t, {})
        if num in res and den in res:
            ratio = res[num]["median_s"] / res[den]["median_s"]
            rows.append(f"| {mode} | {t} | {what} | {ratio:.2f} | <= {limit} | {'yes' if ratio <= limit else 'NO'} |")

    for mode, by_t in all_results.items():
        for t, res in by_t.items():
            if mode == "decode":
                for op in ("mxfp4", "int4"):
                    check(mode, t, f"{op} W4A8 / NBits acc4", f"{op}-a8", "nbits-acc4", 0.6)
                    check(mode, t, f"{op} W4A16 / NBits acc0", f"{op}-a16", "nbits-acc0", 1.0)
                for w4a4 in ("mxfp4-a4mx", "mxfp4-a4int", "int4-a4"):
                    check(mode, t, f"{w4a4} / {w4a4.split('-')[0]} W4A8", w4a4, w4a4.split("-")[0] + "-a8", 1.0)
                for lowrank in (v.name for v in VARIANTS if v.rank):  # the branch's decode cost
                    base = lowrank.rsplit("-", 1)[0]
                    check(mode, t, f"{lowrank} / {base}", lowrank, base, 1.15)
            else:
                nb = [n for n in ("nbits-acc4", "nbits-acc0") if n in res]
                if nb:
                    fast = min(nb, key=lambda n: res[n]["median_s"])
                    for name in res:
                        if not name.startswith(("nbits", "fp32")):
                            check(mode, t, f"{name} / faster NBits ({fast[6:]})", name, fast, 1.0)
    head = ["| mode | threads | ratio | value | target | met |", "|---|---|---|---|---|---|"]
    return ["## Targets", "", *(head + rows if rows else ["(not enough variants for any target)"]), ""]


def machine() -> dict:
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model", "vendor_id") and key not in info:
            info[key] = val.strip()
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    info["avx512"] = " ".join(f for f in ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16") if f" {f}" in flags)
    info["cpus"] = len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("processor")])
    info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


def main() -> None:
    names = [v.name for v in VARIANTS]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default 1 2)")
    p.add_argument("--rounds", type=int, default=9, help="decode: interleaved rounds (default 9)")
    p.add_argument("--runs", type=int, default=20, help="decode: timed runs per variant per round (default 20)")
    p.add_argument("--prefill-rounds", type=int, default=5, help="prefill: rounds of one timed run each (default 5)")
    p.add_argument("--layers", type=int, default=LAYERS, help=f"transformer layers in the stack (default {LAYERS})")
    p.add_argument("--modes", nargs="+", choices=("decode", "prefill"), default=["decode", "prefill"],
                   help="what to time: decode (M=1, with lm_head) and/or prefill (M=512, no lm_head)")
    p.add_argument("--variants", nargs="+", metavar="V", default=names,
                   help="variants to run, by name or substring (e.g. 'mxfp4' 'nbits'); known: " + ", ".join(names))
    p.add_argument("--no-spin", action="store_true",
                   help="set session.intra_op.allow_spinning=0 (ORT default: worker threads spin-wait, which "
                        "costs a lot when other processes compete for the cores)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~1 min): 2 layers, 3 rounds x 5 runs, 2 prefill rounds; writes ops-quick.*")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "runtime",
                   help="output folder for ops.md and ops.json (default bench/results/runtime)")
    args = p.parse_args()
    if args.quick:
        args.layers, args.rounds, args.runs, args.prefill_rounds = 2, 3, 5, 2
    variants = [v for v in VARIANTS if any(f == v.name or f in v.name for f in args.variants)]
    if not variants:
        p.error(f"--variants matched none of {names}")

    info = {"machine": machine(), "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    log(f"variants: {', '.join(v.name for v in variants)}; layers {args.layers}; threads {args.threads}")
    probes = {}
    for t in args.threads:
        probes[t] = bandwidth_probe(t)
        log(f"bandwidth probe {t} thread(s): {probes[t]:.1f} GB/s")
    specs = linears(args.layers, lm_head=True)
    weights = make_weights(specs, {v.kind for v in variants}, max(v.rank for v in variants))
    log(f"weights ready: {len(specs)} linears, {sum(k * n for _, k, n in specs) / 1e6:.2f} M params")

    all_results, errors = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="runtime-ops-", dir="/tmp/bench-ops" if Path("/tmp/bench-ops").is_dir()
                                else None))
    try:
        for mode in args.modes:
            all_results[mode], errs = bench_mode(mode, variants, weights, args, probes, tmp)
            errors.update(errs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for t in args.threads:  # probe again: the machine is shared, the load may have changed
        probes[f"{t}_after"] = bandwidth_probe(t)
    elapsed = time.perf_counter() - T0

    m = info["machine"]
    lines = ["# qpasses runtime ops benchmark: SmolLM2-135M-shaped linear stack", "",
             f"* command: `{info['command']}`", f"* date: {info['date']}; wall time {elapsed:.0f} s",
             (f"* CPU: {m.get('vendor_id')} {m.get('model name')} (family {m.get('cpu family')}, model "
              f"{m.get('model')}), {m['cpus']} CPUs, {m['avx512']}; load average at start "
              f"{' '.join(m['loadavg_at_start'])}"),
             (f"* onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; ORT_ENABLE_ALL, "
              f"intra-op spinning {'off' if args.no_spin else 'on (default)'}"),
             (f"* stack: {args.layers} layers x 7 linears (+ lm_head 576x49152 in decode), distinct random weights;"
              f" decode {args.rounds} rounds x {args.runs} runs, prefill {args.prefill_rounds} rounds x 1 run;"
              " times are the median over rounds (min = best round)"),
             ("* bandwidth probe (np.max over 1 GiB float32, read-only, best of 5), before / after the timings: "
              + ", ".join(f"{t}T {probes[t]:.1f} / {probes[f'{t}_after']:.1f} GB/s" for t in args.threads)),
             ("* x acc4 / x acc0 = time / time of com.microsoft.MatMulNBits (bits 4, block 32) at accuracy_level 4 / 0"
              " on the same INT4 bytes (< 1 = faster)")]
    if args.quick:
        lines.append("* QUICK smoke run: the 2-layer stack (~20 MB at 4 bits) fits in L3, so decode is not cold and the"
                     " roofline ratios are meaningless")
    lines.append("")
    for mode in args.modes:
        lines += [f"## {mode.capitalize()}", "", *tables(mode, all_results[mode], probes)]
    lines += targets(all_results)
    if errors:
        lines += ["## Failures", "", *[f"* {k}: {v}" for k, v in errors.items()], ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ops-quick" if args.quick else "ops"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {**info, "wall_s": elapsed, "bandwidth_GBps": {str(k): v for k, v in probes.items()}, "errors": errors,
         "variants": [asdict(v) for v in variants],
         "results": {md: {str(t): r for t, r in by_t.items()} for md, by_t in all_results.items()}}, indent=1))
    log(f"wrote {args.out / stem}.md and .json in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
