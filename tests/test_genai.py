"""onnxruntime-genai runs a deployed folder as is: its genai_config.json (with the KV buffer shared, genai's
fast path, as the compiler wrote it), its copy of the op library and its tokenizer files, and generates
greedily the tokens `qpasses generate`'s decoder does."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qpasses
from qpasses.evaluate.decoder import Chat, Decoder
from qpasses.models.families import FAMILIES, save_family
from qpasses.runtime.ort import session

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (the test extra has it)")

PROMPT = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
STEPS = 24
UNFUSED = {"gpt2", "falcon", "opt"}  # attention stays unfused (docs/families.md): the past is concatenated
TEXTS = ["Hello, world!", "  tabs\tand\nnew lines", "Ünïcödé ✓ 日本語 🙂", "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("genai") / "tiny-llama-int4-w4a16"
    qpasses.compile(model="tiny-llama", recipe="int4-w4a16", out=out, no_eval=True, calib_windows=4, threads=1,
                    progress=False, layer_error=False)
    return out


def genai_model(folder):
    """The folder's model in genai, on one thread (an overlay in memory: the folder stays as written)."""
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 1}}}}))
    return og.Model(config)


def genai_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """genai's greedy tokens and the logits each was picked from [steps, vocab]."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens, logits = [], []
    while not generator.is_done():
        logits.append(np.asarray(generator.get_logits()).reshape(-1))
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, np.stack(logits)


def decoder_greedy(folder, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """The same from `qpasses generate`'s decoder on the folder's model.onnx."""
    decoder = Decoder(session(folder / "model.onnx", threads=1))
    logits, past = decoder.run(prompt, None, 0)
    tokens, seen = [], []
    for at in range(steps):
        seen.append(logits)
        tokens.append(int(logits.argmax()))
        if at + 1 < steps:
            logits, past = decoder.run([tokens[-1]], past, len(prompt) + at)
    return tokens, np.stack(seen)


def assert_same_generation(folder, model, steps: int) -> None:
    tokens, logits = genai_greedy(model, PROMPT, steps)
    expected_tokens, expected_logits = decoder_greedy(folder, PROMPT, steps)
    assert tokens == expected_tokens
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-5)  # equal in practice


@pytest.fixture(scope="module")
def model(folder):
    return genai_model(folder)


def test_the_folder_shares_the_kv_buffer(folder):
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is True  # every attention is fused (GroupQueryAttention)
    assert (folder / config["model"]["decoder"]["session_options"]["custom_ops_library"]).is_file()


def test_genai_greedy_tokens_and_logits_equal_the_decoders(folder, model):
    assert_same_generation(folder, model, STEPS)


def test_genai_tokenizer_and_chat_template_equal_the_folders(folder, model):
    """Token ids, decoded text (special tokens skipped, as both decode by default) and the chat prompt of
    `qpasses generate` (the folder's chat_template.jinja)."""
    chat, tokenizer = Chat(folder), og.Tokenizer(model)
    for text in TEXTS:
        ids = chat.tokenizer.encode(text).ids
        assert [int(t) for t in tokenizer.encode(text)] == ids
        assert tokenizer.decode(ids) == chat.tokenizer.decode(ids)
    messages = json.dumps([{"role": "user", "content": TEXTS[2]}])
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # the folder's template
    assert [int(t) for t in tokenizer.encode(prompt)] == chat.prompt_ids(TEXTS[2], chat=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_in_genai_as_written(tmp_path, family):
    """The right model.type per family, the shared buffer wherever attention is fused, and the Decoder's
    greedy tokens and logits past the sliding window (64 positions) of the families that have one."""
    save_family(family, tmp_path / family)
    out = tmp_path / "out"
    qpasses.compile(model=str(tmp_path / family), recipe="int4-w4a16-rtn", out=out, no_eval=True, calib_windows=4,
                    threads=1, progress=False, layer_error=False)
    config = json.loads((out / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is (family not in UNFUSED)
    assert_same_generation(out, genai_model(out), 80)
