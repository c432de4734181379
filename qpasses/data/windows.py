"""Token windows for perplexity and calibration (the protocol of docs/evaluation.md#windows).

A text is tokenized in one piece, without BOS or other special tokens. Evaluation takes the first
`n` non-overlapping windows; calibration takes random non-overlapping windows with a fixed seed,
and a held-out set disjoint from them. Token ids are cached on disk, keyed by the text's sha256
and a fingerprint of the tokenizer, so each text is tokenized once per tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from qpasses.cache import cache_dir, sha256_file, write_bytes_atomic
from qpasses.errors import InputError


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides the ids: the tokenizer class and its full backend definition (fast
    tokenizers), or its vocabulary (others)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = backend.to_str()
    else:
        spec = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()


def tokenize_text(tokenizer, path: Path | str) -> torch.LongTensor:
    """1-D ids of the whole UTF-8 file at `path`, tokenized in one piece with no special tokens."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"text file {path} does not exist")
    key = f"{sha256_file(path)[:20]}-{tokenizer_fingerprint(tokenizer)[:20]}"
    cached = cache_dir() / "tokens" / f"{key}.npy"
    if cached.is_file():
        try:
            return torch.from_numpy(np.load(cached).astype(np.int64))
        except (OSError, ValueError):
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"text file {path} is not UTF-8 ({e.reason} at byte {e.start}); convert it first") from e
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    array = np.asarray(ids, dtype=np.int32)
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(cached, buffer.getvalue())
    return torch.from_numpy(array.astype(np.int64))


def _check(ids: torch.Tensor, length: int) -> None:
    if ids.dim() != 1:
        raise InputError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
    if length < 2:
        raise InputError(f"window length must be at least 2 tokens, got {length}")


def eval_windows(ids: torch.Tensor, n: int, length: int = 512) -> torch.LongTensor:
    """The first `n` non-overlapping windows of `length` tokens, shape [n, length]."""
    _check(ids, length)
    fit = ids.numel() // length
    if n < 1 or n > fit:
        raise InputError(f"asked for {n} evaluation windows of {length} tokens, but the text holds "
                         f"{ids.numel():,} tokens: {fit} windows fit; ask for 1 to {fit} or use a longer text")
    return ids[: n * length].reshape(n, length).long().clone()


def calibration_windows(ids: torch.Tensor, n: int, length: int = 512, seed: int = 0,
                        heldout: int = 16) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`n` calibration and `heldout` held-out windows of `length` tokens, random, non-overlapping
    and disjoint, fixed by `seed`.

    The text is cut into consecutive windows after a random start offset (below `length`, within
    what the text leaves over), and the windows are shuffled: calibration takes the front of that
    order and held-out the back, so the calibration set for a smaller `n` is a prefix of a larger
    one and the held-out set does not depend on `n`."""
    _check(ids, length)
    if n < 1 or heldout < 0:
        raise InputError(f"need at least 1 calibration window and 0 or more held-out ones, got {n} and {heldout}")
    fit = ids.numel() // length
    if n + heldout > fit:
        raise InputError(f"asked for {n} calibration + {heldout} held-out windows of {length} tokens, but the "
                         f"text holds {ids.numel():,} tokens: {fit} windows fit; ask for fewer or use a longer text")
    gen = torch.Generator().manual_seed(seed)
    offset = int(torch.randint(0, ids.numel() - fit * length + 1, (1,), generator=gen))
    all_windows = ids[offset: offset + fit * length].reshape(fit, length).long()
    order = torch.randperm(fit, generator=gen)
    return all_windows[order[:n]], all_windows[order[fit - heldout:]]
