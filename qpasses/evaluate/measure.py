"""The measurements a compile run makes: perplexity of the float model, of the stage-A torch
program and of the deployed ONNX file, on the same windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qpasses.cache import cache_dir, write_bytes_atomic


class Evaluator:
    def __init__(self, tokenizer, windows: int | None, text: Path | None, threads: int | None, progress: bool):
        self.tokenizer, self.n, self.text, self.threads, self.progress = tokenizer, windows, text, threads, progress
        self._windows = None

    @property
    def windows(self):
        if self.n is None:
            return None
        if self._windows is None:
            from qpasses.data.texts import debian_text
            from qpasses.data.windows import eval_windows, tokenize_text

            ids = tokenize_text(self.tokenizer, Path(self.text) if self.text else debian_text("eval"))
            self._windows = eval_windows(ids, self.n)
        return self._windows

    @property
    def tokens(self) -> int | None:
        w = self.windows
        return None if w is None else int(w.shape[0] * (w.shape[1] - 1))

    def _ppl(self, fn, label: str):
        from qpasses.evaluate.perplexity import perplexity

        if self.windows is None:
            return None
        result = perplexity(fn, self.windows, desc=label, progress=self.progress)
        print(f"  ppl {label}: {result.ppl:.4f} ({result.tokens} tokens, {result.seconds:.0f} s)")
        return result.ppl

    def torch_fp(self, loaded):
        """The float model in torch; cached on disk when the model has a content hash."""
        from qpasses.evaluate.perplexity import torch_logits_fn
        from qpasses.offload import released_by_module

        if self.windows is None:
            return None
        sha = loaded.source.get("sha256")
        digest = hashlib.sha256(self.windows.numpy().tobytes()).hexdigest()
        key = hashlib.sha256(f"{loaded.name}|{sha}|{digest}".encode()).hexdigest()[:20]
        path = cache_dir() / "ppl" / f"{key}.json"
        if sha and path.is_file():
            ppl = json.loads(path.read_text())["ppl"]
            print(f"  ppl fp (torch): {ppl:.4f} (cached)")
            return ppl
        with released_by_module(loaded.model):  # weights in mapped files: one layer's resident at a time
            ppl = self._ppl(torch_logits_fn(loaded.model), "fp (torch)")
        if sha:
            write_bytes_atomic(path, json.dumps({"ppl": ppl, "model": loaded.name}).encode())
        return ppl

    def torch_program(self, program, label: str):
        from qpasses.evaluate.perplexity import program_logits_fn

        return self._ppl(program_logits_fn(program), label) if self.windows is not None else None

    def ort(self, path: Path, label: str):
        from qpasses.evaluate.perplexity import ort_logits_fn
        from qpasses.runtime.ort import ort_session

        if self.windows is None:
            return None
        return self._ppl(ort_logits_fn(ort_session(path, threads=self.threads)), label)
