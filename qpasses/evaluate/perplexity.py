"""Perplexity over fixed token windows, the same protocol for torch models and ONNX sessions.

Protocol (docs/evaluation.md#perplexity): windows [n, length] of token ids, every position attended
(all-ones mask), batches of `batch_size` windows; each window scores its tokens 1..length-1
against the logits at positions 0..length-2, so n x (length - 1) tokens are scored
(80 x 512 -> 40,880). The per-token cross-entropy is computed from fp32 logits and summed in
float64; perplexity = exp(total nll / scored tokens).

A logits function maps (input_ids [b, length], attention_mask [b, length]), both int64 torch
tensors, to logits [b, length, vocab] as a torch tensor of any float dtype.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qpasses.errors import InputError

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PplResult:
    """ppl = exp(nll / tokens); nll is the summed cross-entropy in nats over the scored tokens."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    seconds: float


def perplexity(logits_fn: LogitsFn, windows: torch.Tensor, batch_size: int = 4, desc: str = "ppl",
               progress: bool = True) -> PplResult:
    """Perplexity of `logits_fn` on `windows` (LongTensor [n, length]), with a tqdm bar on stderr."""
    from tqdm import tqdm

    if windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise InputError(f"perplexity needs at least one window of at least 2 tokens, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    windows = windows.long()
    n, length = windows.shape
    tokens = n * (length - 1)
    nll = 0.0
    start = time.perf_counter()
    with tqdm(total=tokens, desc=desc, unit="tok", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
        for i in range(0, n, batch_size):
            ids = windows[i:i + batch_size]
            logits = logits_fn(ids, torch.ones_like(ids))
            nll += _batch_nll(logits, ids)
            del logits
            bar.update(ids.shape[0] * (length - 1))
    seconds = time.perf_counter() - start
    return PplResult(ppl=math.exp(nll / tokens), nll=nll, tokens=tokens, windows=n, seconds=seconds)


def _batch_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token cross-entropy of one batch, window by window (no full-batch copies)."""
    b, length = ids.shape
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (b, length):
        raise InputError(f"the model returned logits of shape {tuple(logits.shape)} "
                         f"for input ids of shape {(b, length)}")
    vocab = logits.shape[-1]
    top = int(ids.max())
    if top >= vocab:
        raise InputError(f"token id {top} is outside the model's vocabulary of {vocab}: "
                         "the tokenizer does not match the model")
    total = 0.0
    for row in range(b):
        per_token = torch.nn.functional.cross_entropy(logits[row, :-1].float(), ids[row, 1:], reduction="none")
        total += per_token.double().sum().item()
    return total


def torch_logits_fn(module) -> LogitsFn:
    """Logits of a torch module: a Hugging Face causal LM (called with use_cache=False), or any
    module taking (input_ids, attention_mask) positionally, such as `ExportedProgram.module()`.
    The module may return a tensor, a tuple/list (first item), a dict or an object with `.logits`."""
    hf = _is_hf_model(module)

    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if hf:
                return module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return _logits_of(module(input_ids, attention_mask))

    return fn


def program_logits_fn(program) -> LogitsFn:
    """Logits of a captured logits program (an ExportedProgram taking input_ids, attention_mask),
    run node by node (calibration.collect_fx.GraphRunner): the same values as `program.module()`,
    and a weight kept in a mapped file is resident only while its layer runs. Windows with padding
    go through `program.module()`."""
    from qpasses.calibration.collect_fx import GraphRunner

    runner = GraphRunner(program)
    output = runner.order[-1]

    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not bool(attention_mask.all()):
            return torch_logits_fn(program.module())(input_ids, attention_mask)
        with torch.no_grad():
            env = runner.inputs(input_ids)
            runner.run_range(0, len(runner.order) - 2, env)
            return _logits_of([env[v] for v in output.args[0]])

    return fn


def ort_logits_fn(session) -> LogitsFn:
    """Logits of an `onnxruntime.InferenceSession` with int64 inputs `input_ids` (and, when the
    graph has them, `attention_mask` and `position_ids`, fed 0..length-1 on every row); the output
    named `logits`, else the first output. A KV-cache step graph (past_key_values.* inputs
    [batch, kv_heads, past, head_dim]) runs with an empty past: the whole window in one step."""
    inputs = {i.name: i for i in session.get_inputs()}
    if "input_ids" not in inputs:
        raise InputError(f"the ONNX model has no input named 'input_ids' (its inputs: {sorted(inputs)})")
    outputs = [o.name for o in session.get_outputs()]
    name = "logits" if "logits" in outputs else outputs[0]
    past = {n: (i.shape, np.float16 if i.type == "tensor(float16)" else np.float32)
            for n, i in inputs.items() if n.startswith("past_key_values.")}
    if any(not isinstance(shape[1], int) or not isinstance(shape[3], int) for shape, _ in past.values()):
        raise InputError("the ONNX model's past_key_values inputs have no fixed head count and size")

    def fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, length = input_ids.shape
        feeds = {"input_ids": input_ids.contiguous().numpy()}
        if "attention_mask" in inputs:
            feeds["attention_mask"] = attention_mask.contiguous().numpy()
        if "position_ids" in inputs:
            feeds["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (b, length)).copy()
        feeds.update({n: np.zeros((b, shape[1], 0, shape[3]), dtype) for n, (shape, dtype) in past.items()})
        return torch.from_numpy(session.run([name], feeds)[0])

    return fn


def _is_hf_model(module) -> bool:
    transformers = sys.modules.get("transformers")  # an HF model implies transformers is imported
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _logits_of(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return _logits_of(out[0])
    return out.logits
