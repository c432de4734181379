"""Tokenizing a text once (cached) and cutting evaluation and calibration windows."""

from __future__ import annotations

import pytest
import torch

from qpasses.data.windows import calibration_windows, eval_windows, tokenize_text, tokenizer_fingerprint
from qpasses.errors import InputError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QPASSES_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def byte_tokenizer():
    from qpasses.models.tiny import build_byte_tokenizer

    return build_byte_tokenizer()


class Counting:
    """A tokenizer wrapper that counts how often it tokenizes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    @property
    def backend_tokenizer(self):
        return self.tokenizer.backend_tokenizer

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)


def starts(windows: torch.Tensor) -> list[int]:
    """With ids = arange, a window's first id is its start offset in the text."""
    return windows[:, 0].tolist()


def test_tokenize_text_whole_file_no_bos_and_cached(tmp_path, byte_tokenizer, isolated_cache):
    text = "Programs should say what they do.\n" * 40 + "ünïcode\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ids = tokenize_text(byte_tokenizer, path)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.numel() == len(text.encode()) and ids[0] != byte_tokenizer.bos_token_id
    assert byte_tokenizer.decode(ids.tolist()) == text
    cached = list((isolated_cache / "tokens").glob("*.npy"))
    assert len(cached) == 1

    counting = Counting(byte_tokenizer)
    first = tokenize_text(counting, path)
    assert torch.equal(tokenize_text(counting, str(path)), first) and torch.equal(first, ids)
    assert counting.calls == 1  # the second call was served from the cache


def test_cache_key_follows_text_and_tokenizer(tmp_path, byte_tokenizer, isolated_cache):
    path = tmp_path / "t.txt"
    path.write_text("abc", encoding="utf-8")
    tokenize_text(byte_tokenizer, path)
    path.write_text("abcd", encoding="utf-8")
    assert tokenize_text(byte_tokenizer, path).numel() == 4  # new content, new entry
    from transformers import AutoTokenizer

    byte_tokenizer.save_pretrained(str(tmp_path / "tok"))
    changed = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    changed.add_tokens(["abcd"])  # another tokenizer definition, another fingerprint
    assert tokenizer_fingerprint(changed) != tokenizer_fingerprint(byte_tokenizer)
    assert tokenize_text(changed, path).numel() == 1
    assert len(list((isolated_cache / "tokens").glob("*.npy"))) == 3


def test_tokenize_text_bad_files(tmp_path, byte_tokenizer):
    with pytest.raises(InputError, match="does not exist"):
        tokenize_text(byte_tokenizer, tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="is not UTF-8"):
        tokenize_text(byte_tokenizer, bad)


def test_eval_windows_are_the_first_n():
    ids = torch.arange(10 * 64 + 5)
    w = eval_windows(ids, 10, 64)
    assert w.shape == (10, 64) and w.dtype == torch.long
    assert torch.equal(w.flatten(), ids[:640])
    assert eval_windows(ids, 3, 64).tolist() == w[:3].tolist()


def test_eval_windows_say_how_many_fit():
    with pytest.raises(InputError, match=r"holds 645 tokens: 10 windows fit"):
        eval_windows(torch.arange(645), 11, 64)
    with pytest.raises(InputError, match="ask for 1 to 10"):
        eval_windows(torch.arange(645), 0, 64)


def test_calibration_windows_shapes_and_disjointness():
    ids = torch.arange(100 * 32 + 17)
    calib, held = calibration_windows(ids, 20, length=32, seed=3, heldout=8)
    assert calib.shape == (20, 32) and held.shape == (8, 32) and calib.dtype == torch.long
    for w in torch.cat([calib, held]):
        assert torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 32))  # each one a contiguous window
    all_starts = sorted(starts(calib) + starts(held))
    assert all(b - a >= 32 for a, b in zip(all_starts, all_starts[1:]))  # non-overlapping, disjoint sets
    assert starts(calib) != sorted(starts(calib))  # random order, not the text's


def test_calibration_windows_deterministic_and_nested():
    ids = torch.arange(100 * 32)
    a = calibration_windows(ids, 20, length=32, seed=0, heldout=8)
    b = calibration_windows(ids, 20, length=32, seed=0, heldout=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = calibration_windows(ids, 20, length=32, seed=1, heldout=8)
    assert not torch.equal(a[0], other[0])
    small = calibration_windows(ids, 5, length=32, seed=0, heldout=8)
    assert torch.equal(small[0], a[0][:5])  # fewer windows: a prefix of the same draw
    assert torch.equal(small[1], a[1])  # the held-out set does not depend on n
    none_held = calibration_windows(ids, 5, length=32, seed=0, heldout=0)[1]
    assert none_held.shape == (0, 32)


def test_calibration_windows_say_how_many_fit():
    with pytest.raises(InputError, match=r"asked for 90 calibration \+ 16 held-out windows .* 100 windows fit"):
        calibration_windows(torch.arange(100 * 32), 90, length=32)
    with pytest.raises(InputError, match="at least 2"):
        calibration_windows(torch.arange(100), 1, length=1)
