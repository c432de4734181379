"""`qpasses eval`: perplexity of an exported ONNX model in onnxruntime (CPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qpasses.errors import InputError

DESCRIPTION = """\
Measure the perplexity of an ONNX model (inputs input_ids and attention_mask, output logits) in
onnxruntime on the CPU, with the same protocol as `qpasses run`: the text is tokenized in one
piece, its first N x 512 tokens are cut into N non-overlapping windows, every window is run with
an all-ones mask, and each window scores its last 511 tokens (80 windows -> 40,880 tokens).

Graph optimizations change what is measured: from the "extended" level up onnxruntime fuses
int4 DequantizeLinear + MatMul into MatMulNBits, by default with int8 activations, which turns a
W4A16 model into W4A8. The level and session config entries come from --optimization and
--ort-config, else from the model's own `qpasses.ort` metadata (written by `qpasses run`), else
level "all" with onnxruntime's defaults. The settings used are printed with the result.

examples:
  qpasses eval out/int4/model.onnx
  qpasses eval out/int4 --windows 8 --json
  qpasses eval model.onnx --tokenizer model/hf --text notes.txt --threads 1
  qpasses eval out/int4 --ort-config session.qdq_matmulnbits_accuracy_level=4   # measure as W4A8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `qpasses eval`."""
    from qpasses.runtime.ort import ORT_OPT_LEVELS

    parser.add_argument("model", type=Path, metavar="MODEL.onnx",
                        help="the ONNX file, or a deployed folder holding model.onnx")
    parser.add_argument("--windows", type=int, default=80, metavar="N",
                        help="number of 512-token windows (default %(default)s)")
    parser.add_argument("--text", type=Path, metavar="FILE",
                        help="UTF-8 text to score (default: the GNU Coding Standards from Debian)")
    parser.add_argument("--tokenizer", type=Path, metavar="DIR",
                        help="folder with the tokenizer files (default: the model's folder)")
    parser.add_argument("--threads", type=int, metavar="T", help="onnxruntime and torch threads (default: all cores)")
    parser.add_argument("--optimization", choices=sorted(ORT_OPT_LEVELS), metavar="LEVEL",
                        help="onnxruntime graph optimization level: disable, basic, extended or all "
                             "(default: the model's metadata, else all)")
    parser.add_argument("--ort-config", action="append", default=[], metavar="KEY=VALUE",
                        help="onnxruntime session config entry, overriding the model's metadata (repeatable)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="B", help="windows per run (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line of text")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Measure and print; returns the exit status. Bad inputs raise `InputError`."""
    from qpasses.evaluate.perplexity import ort_logits_fn, perplexity
    from qpasses.runtime.ort import ort_session, ort_settings

    if args.windows < 1:
        raise InputError(f"--windows must be at least 1, got {args.windows}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    model = _model_file(Path(args.model))
    settings = ort_settings(model, args.optimization, _config_entries(args.ort_config))
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else model.parent
    tokenizer = _load_tokenizer(tokenizer_dir)
    text = _text_file(args.text)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    from qpasses.data.windows import eval_windows, tokenize_text

    windows = eval_windows(tokenize_text(tokenizer, text), args.windows)
    session = ort_session(model, threads=args.threads, optimization=settings.optimization,
                          extra_config=settings.config)
    result = perplexity(ort_logits_fn(session), windows, batch_size=args.batch_size, desc=model.name,
                        progress=not args.no_progress)
    if args.json:
        print(json.dumps({
            "model": str(model), "text": str(text), "tokenizer": str(tokenizer_dir),
            "ppl": result.ppl, "nll": result.nll, "tokens": result.tokens, "windows": result.windows,
            "window_length": int(windows.shape[1]), "batch_size": args.batch_size, "threads": args.threads,
            "seconds": result.seconds,
            "ort": {"optimization": settings.optimization, "optimization_source": settings.source,
                    "config": settings.config},
        }))
    else:
        print(f"ppl {result.ppl:.4f} on {result.tokens:,} tokens ({result.windows} windows of {windows.shape[1]}) "
              f"of {text.name} in {result.seconds:.1f} s; {model}; onnxruntime {settings.describe()}")
    return 0


def _model_file(path: Path) -> Path:
    """A deployed folder stands for its model.onnx; existence is checked when the file is read."""
    return path / "model.onnx" if path.is_dir() else path


def _config_entries(items: list[str]) -> dict[str, str]:
    entries = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--ort-config wants KEY=VALUE, got {item!r}")
        entries[key.strip()] = value.strip()
    return entries


def _load_tokenizer(folder: Path):
    if not folder.is_dir():
        raise InputError(f"tokenizer folder {folder} does not exist; pass --tokenizer DIR")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001  (transformers raises many unrelated types here)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load a tokenizer from {folder}: {first}; pass --tokenizer DIR") from e


def _text_file(path: Path | None) -> Path:
    if path is None:
        from qpasses.data.texts import debian_text

        return Path(debian_text("eval"))
    if not Path(path).is_file():
        raise InputError(f"text file {path} does not exist")
    return Path(path)
