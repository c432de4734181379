"""The `qpasses` command: run (compile a model with a recipe), eval (perplexity of any exported
model), generate (text from a deployed folder), doctor (check this machine), recipes (list the
built-in recipes). Errors print one line and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qpasses.errors import QPassError

RUN_HELP = """\
Quantize a model with a recipe and write a deployable ONNX folder with a report.

Writes OUT/model.onnx (the KV-cache step graph), its weight file OUT/model.onnx.data, the custom-op
library it needs (libqpasses_ops.so), the tokenizer, OUT/report.md and OUT/report.json, and measures
perplexity three times on the same windows: the float model, the stage-A torch model (after the
float transforms, before export) and the deployed file in onnxruntime (with an empty past).

examples:
  qpasses run                                          # smollm2-135m with the default recipe
  qpasses run --recipe mxfp4-w4a16-rtn --out out/mx
  qpasses run --model tiny-llama --eval-windows 4 --calib-windows 8
  qpasses run --set quantize_weights.block_size=32 --force
"""


def _run(args) -> int:
    from qpasses.compiler import Options, run

    opts = Options(model=args.model, recipe=args.recipe, out=args.out, tokenizer=args.tokenizer,
                   calib_windows=args.calib_windows, eval_windows=args.eval_windows, eval_text=args.text,
                   no_eval=args.no_eval, stage_a_eval=not args.no_stage_a_eval, seed=args.seed, threads=args.threads,
                   sets=args.set or [],
                   force=args.force, progress=not args.no_progress, dump_dir=args.dump,
                   layer_error=not args.no_layer_error, max_context=args.max_context,
                   runtime_copy=not args.no_runtime_copy)
    run(opts)
    return 0


GENERATE_HELP = """\
Generate text from a folder written by `qpasses run`, with its KV-cache step graph
(model.onnx) in onnxruntime and the qpasses custom ops: the check that the quantized
model still talks. The prompt is wrapped in the folder's chat template (--raw: as given);
decoding is greedy unless --temperature > 0. Prints the text as it is generated, then the
prefill and decode speed on stderr.

examples:
  qpasses generate smollm2-135m-int4-w4a16 --prompt "What is the capital of France?"
  qpasses generate out/mx --prompt "Once upon a time" --raw --max-tokens 64 --temperature 0.7
"""


def _generate(args) -> int:
    from qpasses.evaluate.decoder import generate_text

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    r = generate_text(args.folder, args.prompt, max_tokens=args.max_tokens, chat=not args.raw, threads=args.threads,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed, on_text=show)
    show("\n")
    print(f"[{r['prompt_tokens']} prompt tokens at {r['prefill_tps']:.0f} tok/s, {r['new_tokens']} new tokens "
          f"at {r['decode_tps']:.1f} tok/s]", file=sys.stderr)
    if r["context_full"]:
        print(f"[stopped at the folder's context limit, {r['context_limit']} positions]", file=sys.stderr)
    return 0


def _recipes(args) -> int:
    from qpasses.recipe import COMPOSED, DEFAULT_RECIPE, builtin_recipes

    items = builtin_recipes()
    groups = {f"composed: every method in its best measured order (default {DEFAULT_RECIPE})": COMPOSED,
              "baselines: round to nearest": [n for n in items if n not in COMPOSED and n != "fp"],
              "reference": ["fp"]}
    width = max(map(len, items))
    for title, names in groups.items():
        print(title)
        for name in names:
            print(f"  {name:<{width}}  {items[name]}")
    print("or any recipe file: --recipe path/to/recipe.toml "
          "(the ablation recipes are in the repository's bench/recipes/)")
    return 0


def parser() -> argparse.ArgumentParser:
    from qpasses.cli import eval_cmd
    from qpasses.recipe import DEFAULT_RECIPE

    p = argparse.ArgumentParser(prog="qpasses", description="Compile LLMs into small, fast 4-bit ONNX files.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="quantize a model with a recipe", description=RUN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m, tiny-llama, tiny-llama-96, a Hugging Face folder, or an .onnx file "
                        "(default %(default)s)")
    r.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help="built-in recipe name or .toml path (default %(default)s; see `qpasses recipes`)")
    r.add_argument("--out", type=Path, help="output folder (default: <model>-<recipe>)")
    r.add_argument("--tokenizer", help="Hugging Face folder with the tokenizer, for models that carry none")
    r.add_argument("--calib-windows", type=int, default=128,
                   help="calibration windows of 512 tokens (default %(default)s)")
    r.add_argument("--eval-windows", type=int, default=80,
                   help="evaluation windows of 512 tokens (default %(default)s)")
    r.add_argument("--text", type=Path, help="evaluation text file (default: the GNU Coding Standards from Debian)")
    r.add_argument("--no-eval", action="store_true", help="skip all perplexity measurements")
    r.add_argument("--no-stage-a-eval", action="store_true",
                   help="measure the float and deployed models only, not the transformed torch program "
                        "(saves minutes with simulated 4-bit activations)")
    r.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and random rotations")
    r.add_argument("--threads", type=int, help="torch and onnxruntime threads (default: all cores)")
    r.add_argument("--set", action="append", metavar="PASS.KEY=VALUE", help="override a recipe setting (repeatable)")
    r.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    r.add_argument("--dump", type=Path, help="write the graph before and after every pass into this folder")
    r.add_argument("--no-layer-error", action="store_true",
                   help="skip the per-site layer error probe, which costs one held-out forward per stage-A pass")
    r.add_argument("--no-runtime-copy", action="store_true",
                   help="do not copy the custom-op library libqpasses_ops.so into the folder (runners then need "
                        "its path from elsewhere)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--max-context", type=int, metavar="N",
                   help="decode at most N positions: the rotary tables' rows (default: the model's "
                        "max_position_embeddings)")
    r.set_defaults(func=_run)
    e = sub.add_parser("eval", help="perplexity of an exported ONNX model", description=eval_cmd.DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_cmd.add_arguments(e)
    e.set_defaults(func=eval_cmd.run)
    g = sub.add_parser("generate", help="generate text from a deployed folder", description=GENERATE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("folder", type=Path, help="a folder written by `qpasses run`")
    g.add_argument("--prompt", required=True, help="the user message (or, with --raw, the text to continue)")
    g.add_argument("--max-tokens", type=int, default=128, help="new tokens at most (default %(default)s)")
    g.add_argument("--raw", action="store_true", help="continue the prompt as given, without the chat template")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    g.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    g.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    g.set_defaults(func=_generate)
    from qpasses.cli import doctor

    d = sub.add_parser("doctor", help="check onnxruntime, the runtime library and its kernels on this machine",
                       description=doctor.DESCRIPTION)
    d.add_argument("folder", nargs="?", type=Path,
                   help="a deployed folder (or one .onnx file): also check onnxruntime against what its graphs need")
    d.set_defaults(func=doctor.run)
    sub.add_parser("recipes", help="list the built-in recipes").set_defaults(func=_recipes)
    return p


def quiet() -> None:
    """Keep the terminal for our own progress and results: the exporter and loaders are chatty."""
    import logging
    import os
    import warnings

    import torch  # noqa: F401  (torch configures its loggers on import; ours must come after)

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("run", "eval"):
        quiet()
    try:
        return args.func(args)
    except QPassError as e:
        print(f"qpasses: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; the same command resumes after the layers already finished" if args.command == "run" else ""
        print(f"qpasses: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
