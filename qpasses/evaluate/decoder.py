"""Text generation with a deployed folder's KV-cache step graph (model.onnx) in onnxruntime,
our custom ops registered: the check that a quantized model still talks, and the loop the speed
benchmark times.

The step graph takes input_ids, attention_mask, position_ids and past_key_values.{i}.key/value
([batch, kv_heads, past, head_dim]) and returns logits and present.{i}.key/value, which the next
step feeds back as its past. The prompt goes through it once with an empty past (prefill), then
one token per step (decode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from qpasses.errors import InputError

MODEL_FILE = "model.onnx"


class Decoder:
    """A KV-cache step graph's session with greedy or sampled generation (plain run or IO binding)."""

    def __init__(self, sess, iobinding: bool = False):
        self.sess, self.iobinding = sess, iobinding
        inputs = {i.name: i for i in sess.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past or "input_ids" not in inputs:
            raise InputError("this graph is not a KV-cache step graph: it has no past_key_values.* inputs")
        self.present = [p.replace("past_key_values.", "present.") for p in self.past]
        self.positions = "position_ids" in inputs  # an exporter may drop an input the graph never reads
        shape = inputs[self.past[0]].shape
        self.empty = np.zeros((1, shape[1], 0, shape[3]), np.float32)  # [batch, kv_heads, 0, head_dim]
        self.binding = sess.io_binding()
        self.ort_seconds = 0.0  # time inside session.run / run_with_iobinding, summed

    def run(self, tokens: list[int], past: list | None, start: int):
        """One forward pass: (logits of the last position, present KV as OrtValues or numpy arrays)."""
        n = len(tokens)
        feeds = {"input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, start + n), np.int64)}
        if self.positions:
            feeds["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
        past = past if past is not None else [self.empty] * len(self.past)
        if not self.iobinding:
            feeds.update(zip(self.past, past))
            t = time.perf_counter()
            out = self.sess.run(["logits", *self.present], feeds)
            self.ort_seconds += time.perf_counter() - t
            return out[0][0, -1], out[1:]
        b = self.binding
        for name, arr in feeds.items():
            b.bind_cpu_input(name, arr)
        for name, value in zip(self.past, past):
            if isinstance(value, np.ndarray):
                b.bind_cpu_input(name, value)
            else:
                b.bind_ortvalue_input(name, value)
        for name in ("logits", *self.present):
            b.bind_output(name, "cpu")  # ORT allocates fresh outputs every run
        t = time.perf_counter()
        self.sess.run_with_iobinding(b)
        self.ort_seconds += time.perf_counter() - t
        out = b.get_outputs()
        return out[0].numpy()[0, -1], out[1:]

    def stream(self, prompt: list[int], steps: int, pick: Callable[[np.ndarray], int] | None = None,
               stop: set[int] = frozenset()) -> Iterator[int]:
        """Yield up to `steps` new tokens (greedy unless `pick` chooses from the logits); ends after a
        token in `stop` (which is yielded)."""
        pick = pick or (lambda logits: int(logits.argmax()))
        logits, past = self.run(prompt, None, 0)
        pos = len(prompt)
        for _ in range(steps):
            token = pick(logits)
            yield token
            if token in stop:
                return
            logits, past = self.run([token], past, pos)
            pos += 1

    def generate(self, prompt: list[int], steps: int) -> tuple[list[int], float]:
        """Greedy, exactly `steps` tokens; returns them and the seconds of the single-token steps
        (self.ort_seconds: the part of them spent inside onnxruntime's run)."""
        it = self.stream(prompt, steps)
        tokens = [next(it)]  # the prefill's token: not timed
        t, self.ort_seconds = time.perf_counter(), 0.0
        tokens += list(it)
        return tokens, time.perf_counter() - t

    def prefill(self, prompt: list[int]) -> float:
        t = time.perf_counter()
        self.run(prompt, None, 0)
        return time.perf_counter() - t


def sampler(temperature: float, top_k: int, seed: int) -> Callable[[np.ndarray], int] | None:
    """Greedy for temperature 0, else softmax(logits / T) over the top_k (0: all) tokens."""
    if temperature <= 0:
        return None
    rng = np.random.default_rng(seed)

    def pick(logits: np.ndarray) -> int:
        z = logits.astype(np.float64) / temperature
        if 0 < top_k < z.size:
            z[np.argpartition(z, -top_k)[:-top_k]] = -np.inf
        p = np.exp(z - z.max())
        return int(rng.choice(z.size, p=p / p.sum()))

    return pick


class Chat:
    """A deployed folder's tokenizer, chat template and end-of-turn token."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise InputError(f"{folder} has no tokenizer.json: is it a `qpasses run` output folder?")
        self.tokenizer = Tokenizer.from_file(str(path))
        config = folder / "tokenizer_config.json"
        cfg = json.loads(config.read_text()) if config.is_file() else {}
        template = folder / "chat_template.jinja"
        self.template = template.read_text() if template.is_file() else None
        self.stop = {i for t in (cfg.get("eos_token"), "<|endoftext|>") if t
                     for i in [self.tokenizer.token_to_id(t)] if i is not None}

    def prompt_ids(self, text: str, chat: bool) -> list[int]:
        if chat and self.template:
            import jinja2

            text = jinja2.Template(self.template).render(messages=[{"role": "user", "content": text}],
                                                         add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def generate_text(folder: Path, prompt: str, max_tokens: int = 128, chat: bool = True, threads: int | None = None,
                  temperature: float = 0.0, top_k: int = 50, seed: int = 0,
                  on_text: Callable[[str], None] | None = None) -> dict:
    """Generate from `prompt` with folder/model.onnx; `on_text` gets the text as it grows
    (the new part each time). Returns the text, token counts and prefill / decode speed."""
    import qpasses.runtime

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder} has no {MODEL_FILE}: generate needs a folder written by `qpasses run`")
    chat_ = Chat(folder)
    ids = chat_.prompt_ids(prompt, chat)
    limit = served_positions(folder)
    if limit is not None and len(ids) >= limit:
        raise InputError(f"the prompt has {len(ids)} tokens and {folder} serves {limit} positions; shorten the "
                         f"prompt, or compile again with a larger --max-context (the model's own limit permitting)")
    if limit is not None:
        max_tokens = min(max_tokens, limit - len(ids))  # the step at position `limit` would fail in onnxruntime
    sess = qpasses.runtime.session(folder / MODEL_FILE, threads=threads)
    if not any(i.name.startswith("past_key_values.") for i in sess.get_inputs()):
        why = ("it was compiled from an ONNX file without one; to generate, compile the Hugging Face model or GGUF "
               "instead" if _compiled_from_onnx(folder) else "generate needs a folder written by `qpasses run`")
        raise InputError(f"{folder}/{MODEL_FILE} has no KV cache (no past_key_values inputs): {why}")
    dec = Decoder(sess)
    t0 = time.perf_counter()
    tokens, shown, t_first = [], "", None
    for token in dec.stream(ids, max_tokens, sampler(temperature, top_k, seed), chat_.stop):
        t_first = t_first or time.perf_counter()
        if token in chat_.stop:
            break
        tokens.append(token)
        text = chat_.tokenizer.decode(tokens)
        if on_text and text.startswith(shown) and not text.endswith("\ufffd"):  # whole characters only
            on_text(text[len(shown):])
            shown = text
    text = chat_.tokenizer.decode(tokens)
    if on_text and text != shown:
        on_text(text[len(shown):] if text.startswith(shown) else "\n" + text)
    t1 = time.perf_counter()
    return {"text": text, "prompt_tokens": len(ids), "new_tokens": len(tokens),
            "prefill_tps": len(ids) / max(t_first - t0, 1e-9) if t_first else 0.0,
            "decode_tps": (len(tokens) - 1) / max(t1 - t_first, 1e-9) if len(tokens) > 1 else 0.0,
            "context_full": limit is not None and len(ids) + len(tokens) >= limit, "context_limit": limit}


def served_positions(folder: Path) -> int | None:
    """The positions the folder's decoder serves (manifest.json `max_context`: its rotary tables' rows, else
    the model's own limit), or None when the folder does not say."""
    try:
        context = json.loads((folder / "manifest.json").read_text()).get("max_context") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return context.get("rotary_rows") or context.get("model")


def _compiled_from_onnx(folder: Path) -> bool:
    """True when the folder's manifest.json says `qpasses run` compiled it from an ONNX file."""
    try:
        return json.loads((folder / "manifest.json").read_text())["model"]["kind"] == "onnx"
    except (OSError, ValueError, KeyError, TypeError):
        return False
