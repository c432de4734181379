"""The run report: report.json (for scripts) and report.md (for people), from one dict."""

from __future__ import annotations

import json
import os
import resource
from importlib import metadata
from pathlib import Path

MODEL_FILE_SUFFIXES = (".onnx", ".data")
VERSIONED = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "numpy")


def versions() -> dict[str, str]:
    from qpasses import __version__

    out = {"qpasses": __version__}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def model_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.iterdir() if f.name.endswith(MODEL_FILE_SUFFIXES))


def stored_weight_bytes(out: Path) -> int:
    """Bytes of every initializer of the deployed graphs, each shared name counted once."""
    import onnx

    seen: dict[str, int] = {}
    for f in sorted(out.glob("*.onnx")):
        model = onnx.load(str(f), load_external_data=False)
        for t in model.graph.initializer:
            if t.name in seen:
                continue
            ext = {e.key: e.value for e in t.external_data}
            seen[t.name] = int(ext["length"]) if "length" in ext else len(t.raw_data) or _typed_bytes(t)
    return sum(seen.values())


def _typed_bytes(t) -> int:
    import onnx

    return onnx.numpy_helper.to_array(t).nbytes


def weight_count(loaded) -> int:
    if loaded.parameters is not None:
        return loaded.parameters
    if loaded.model is not None:
        return sum(p.numel() for p in loaded.model.parameters())  # tied parameters are counted once
    import onnx_ir as ir

    model = ir.load(loaded.onnx_path)
    return sum(v.const_value.size for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.dtype.is_floating_point())


def build(opts, out: Path, recipe, loaded, results, ppl, evaluator, quantize_seconds, total_seconds,
          layer_error: dict | None = None, profile: dict | None = None,
          unquantized_sites: list[dict] | None = None) -> dict:
    """The report of a run whose deployed files are in `out`; `layer_error` is the table of
    evaluate.layer_error ({site: {pass: E}}, empty when the probe was off); `unquantized_sites` the
    linears the recipe kept in float ({name, shape, reason}, passes.coverage)."""
    count = weight_count(loaded)
    stored = stored_weight_bytes(out)
    return {
        "model": loaded.name,
        "recipe": recipe.name,
        "recipe_description": recipe.description,
        "recipe_sha256": recipe.sha256,
        "random_weights": loaded.source.get("random_weights"),
        "ppl_fp": ppl["fp"],
        "ppl_stage_a": ppl["stage_a"],
        "ppl_quant": ppl["quant"],
        "eval_windows": None if evaluator.windows is None else int(evaluator.windows.shape[0]),
        "eval_tokens": evaluator.tokens,
        "onnx_bytes": model_bytes(out),
        "fp32_onnx_bytes": 4 * count,
        "weight_count": count,
        "stored_weight_bytes": stored,
        "bits_per_weight": 8 * stored / count,
        "passes": [r.to_json() for r in results],
        "unquantized_sites": unquantized_sites or [],
        "quantize_seconds": round(quantize_seconds, 2),
        "total_seconds": round(total_seconds, 2),
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": opts.threads or os.cpu_count(),
        "ort": ort_settings(out / "model.onnx").describe(),
        "files": sorted(f.name for f in out.iterdir()),
        "versions": versions(),
        "layer_error": layer_error or {},
        "profile": profile or {},
    }


def ort_settings(path: Path):
    from qpasses.runtime.ort import ort_settings as settings

    return settings(path)


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def render_markdown(r: dict) -> str:
    ratio = r["onnx_bytes"] / r["fp32_onnx_bytes"]
    lines = [
        f"# qpasses report: {r['model']} with {r['recipe']}",
        "",
        r["recipe_description"],
        "",
        *([f"The model's weights are random ({r['random_weights']}): its perplexities mean nothing, they only "
           "show whether the deployed file computes what stage A computes.", ""] if r.get("random_weights") else []),
        "| measure | value |",
        "|---|---|",
        f"| perplexity, float model | {_fmt(r['ppl_fp'])} |",
        f"| perplexity, stage A (torch) | {_fmt(r['ppl_stage_a'])} |",
        f"| perplexity, deployed (onnxruntime) | {_fmt(r['ppl_quant'])} ({r['ort']}) |",
        f"| scored tokens | {r['eval_tokens'] or 'n/a'} ({r['eval_windows'] or 0} windows) |",
        f"| deployed model files | {r['onnx_bytes'] / 1e6:.1f} MB "
        f"({ratio:.3f}x of fp32 {r['fp32_onnx_bytes'] / 1e6:.1f} MB) |",
        f"| bits per weight | {r['bits_per_weight']:.2f} |",
        f"| quantize time | {r['quantize_seconds']:.1f} s (total run {r['total_seconds']:.1f} s) |",
        f"| peak RSS | {r['peak_rss_bytes'] / 2**30:.2f} GiB |",
        "",
        "| pass | rewrites | seconds |",
        "|---|---|---|",
    ]
    for p in r["passes"]:
        rw = ", ".join(f"{k} {v}" for k, v in p["rewrites"].items()) or "-"
        lines.append(f"| {p['name']} | {rw} | {p['seconds']:.2f} |")
    if r.get("profile"):
        lines += ["", "## Where the time went", "", *profile_table(r["profile"], r["total_seconds"])]
    if r.get("layer_error"):
        from qpasses.evaluate.layer_error import summary

        lines += ["", "## Layer error (held-out tokens, E = ‖X·Wfᵀ − Qa(X)·Wqᵀ‖² / ‖X·Wfᵀ‖² per site)", "",
                  summary(r["layer_error"])]
    lines += ["", "versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), ""]
    return "\n".join(lines)


def profile_table(profile: dict, total_seconds: float) -> list[str]:
    """Markdown rows of a run's profile (qpasses.profiling): each stage's exclusive wall and CPU
    seconds, the cores it kept busy and its peak resident memory, slowest first."""
    rows = ["| stage | seconds | share | CPU seconds | cores busy | peak RSS GiB |", "|---|---:|---:|---:|---:|---:|"]
    for name, p in sorted(profile.items(), key=lambda kv: -kv[1]["seconds"]):
        busy = p["cpu_seconds"] / p["seconds"] if p["seconds"] > 0 else 0.0
        rows.append(f"| {name} | {p['seconds']:.1f} | {p['seconds'] / max(total_seconds, 1e-9):.0%} | "
                    f"{p['cpu_seconds']:.1f} | {busy:.2f} | {p['peak_rss_bytes'] / 2**30:.2f} |")
    return rows


# Plain writes: these files go into the staged deployment folder (export.deploy.staged), which
# appears under its final name only once everything in it is written.
def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(x):
    """numpy scalars and arrays as JSON numbers and lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def write(r: dict, out: Path) -> None:
    write_json(out / "report.json", r)
    (out / "report.md").write_text(render_markdown(r))
