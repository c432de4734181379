"""Which decoder families the compiler takes: one tiny seeded config per family through a few recipes.

    .venv/bin/python bench/families.py                         # every family x int4-w4a16-rtn, int4-w4a16, mxfp4-w4a4
    .venv/bin/python bench/families.py --families gpt2 opt --recipes int4-w4a16-rtn
    .venv/bin/python bench/families.py --families                # rebuild docs/families.md only

Each family is the tiny seeded model of qpasses.models.families (hidden 64, 2 layers, 4 heads, 2 KV
heads where the family has them, vocabulary 512, byte tokenizer), saved once under
bench/results/families/<family>/model and compiled with `qpasses run --eval-windows 2` in a child
process. A cell is "ok" when the run succeeds and quantizes every linear of the model (ORT perplexity
against stage A in brackets), "fp32 linears" when it succeeds but lowers fewer linear sites than the
model has, else the error's last line. Each cell is kept in bench/results/families/<family>/<recipe>.txt;
docs/families.md is rebuilt from every kept cell, so a run of a few families updates their rows only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from qpasses.models.families import FAMILIES, save_family

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "bench" / "results" / "families"
RECIPES = ("int4-w4a16-rtn", "int4-w4a16", "mxfp4-w4a4")
HOW = """## How a family's structure is read

Nothing is recognized by module name; each part is found as what it computes.

- **Linears**: every product of an activation by a parameter matrix becomes one `aten.linear` right
  after capture (`qpasses/export/canonical_linears.py`): `nn.Linear`, GPT-2's `Conv1D` (`addmm` with a
  [in, out] weight, held transposed from then on), Falcon's `x @ W.T` (+ bias). Fused projections
  (Phi-3's `qkv_proj` and `gate_up_proj`, GPT-2's `c_attn`, Falcon's `query_key_value`) stay fused;
  smoothing scales the rows of the piece it needs.
- **lm_head**: the linear that produces the logits output (so `ignore = ["lm_head"]` also keeps an
  anonymous `val_451` or `onnx::MatMul_767` of a foreign ONNX file in float).
- **Norms**: RMSNorm (`x·rsqrt(mean(x²) + eps)·γ`), Gemma's `(1 + γ)` variant and LayerNorm with
  bias; smoothing folds 1/s into γ (and β).
- **Attention**: the KV-cache graph's attention fuses into `GroupQueryAttention` with its mask
  (causal, or sliding window: mistral-sliding, Gemma 2 / 3's local layers, captured with a full KV cache
  and the window in the mask, so the present cache is past + seq on every layer, never cropped),
  Gemma 2's soft-capping (`softcap`), q / k norms, and one rotary table pair per distinct rotary
  (default, linear, Llama 3, YaRN with its attention factor; a partial rotary as RotaryEmbedding's
  `rotary_embedding_dim`); sized from `max_position_embeddings`
  ([evaluation.md](evaluation.md)). Rotaries that change with the position (dynamic, LongRoPE) stay
  as exported, and so does the attention of GPT-2 (learned positions, no rotary), OPT (its scale
  applied to q before the product) and Falcon (its own layout), the reason in the manifest's
  `misses`: those decode correctly, with the cache rebuilt every step (slower).
- **Where a method cannot apply**: smoothing leaves a site whose producer cannot absorb 1/s
  (an attention output, a GELU) unscaled and lists it (`smoothing.skipped`); where no site can take
  it (GPT-2 and Falcon: GELU MLPs) the pass does not apply, and the report says so
  (`passes[].not_applied`, a warning). A linear the recipe meant to quantize but that is still float
  after lowering stops the run (exit 2, one line naming it); the ones kept on purpose are in
  report.json's `unquantized_sites`.
""".splitlines()


def compile_one(folder: Path, recipe: str, out: Path, linears: int) -> str:
    cmd = [sys.executable, "-m", "qpasses.cli.main", "run", "--model", str(folder), "--recipe", recipe,
           "--out", str(out), "--force", "--eval-windows", "2", "--calib-windows", "4", "--threads", "1",
           "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        return f"exit {done.returncode}: {lines[-1].strip() if lines else '(no output)'}"
    report = json.loads((out / "report.json").read_text())
    lowered = sum(p["rewrites"].get(k, 0) for p in report["passes"] if p["name"] == "lower_linears"
                  for k in p["rewrites"] if not k.startswith(("gather", "expand")))
    ignored = len(report["unquantized_sites"])  # kept in float by the recipe (the RTN baselines' lm_head)
    rel = abs(report["ppl_quant"] - report["ppl_stage_a"]) / report["ppl_stage_a"]
    verdict = "ok" if lowered >= linears - ignored else f"fp32 linears: {lowered} of {linears - ignored} lowered"
    return f"{verdict} (ORT vs stage A {rel:.1e})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES),
                    help="families to run (default: all; none: only rebuild the table from the kept cells)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--table", type=Path, default=ROOT / "docs" / "families.md")
    args = ap.parse_args()
    rows = []
    for family in args.families:
        folder = RUNS / family / "model"
        try:
            linears = save_family(family, folder)
        except Exception as e:  # a config this transformers cannot build is a row, not a stop
            linears, failed = 0, f"cannot build: {type(e).__name__}: {e}"
        else:
            failed = None
        for recipe in args.recipes:
            t = time.perf_counter()
            cell = failed or compile_one(folder, recipe, RUNS / family / recipe, linears)
            (RUNS / family / f"{recipe}.txt").write_text(cell + "\n")
            print(f"{family} {recipe}: {cell} ({time.perf_counter() - t:.0f} s)", flush=True)
    recipes = [r for r in dict.fromkeys([*RECIPES, *args.recipes])
               if any((RUNS / f / f"{r}.txt").exists() for f in FAMILIES)]
    for family in FAMILIES:
        kept = [RUNS / family / f"{r}.txt" for r in recipes]
        if any(k.exists() for k in kept):
            rows.append((family, [k.read_text().strip() if k.exists() else "not run" for k in kept]))
    md = ["# Decoder families", "",
          "Made by `bench/families.py` (its docstring says how): a tiny seeded model of each family through "
          "each recipe, `qpasses run --eval-windows 2 --calib-windows 4 --threads 1`. \"ok\": every linear "
          "lowered; \"fp32 linears\": the run succeeded but left linears in float; otherwise the error's last "
          "line.", "",
          "| family | " + " | ".join(recipes) + " |", "|---|" + "---|" * len(recipes)]
    md += [f"| {family} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for family, cells in rows]
    md += ["", *HOW]
    args.table.write_text("\n".join(md) + "\n")
    print(f"saved {args.table}")


if __name__ == "__main__":
    main()
