"""Hugging Face optimum (optimum-onnx's ORTModelForCausalLM, transformers 4.x) runs a deployed folder
as is: greedy `generate` gives the tokens of our Decoder, and transformers 4.x loads the folder's
config.json, generation_config.json and tokenizer. optimum-onnx pins transformers < 4.58, ours is
5.x: it runs in its own cached venv (tests/runner_venv.py; about 2 minutes to build, once).

The user code is tests/runners/optimum_generate.py: it registers our library through
SessionOptions.register_custom_ops_library and passes `session_options=` to from_pretrained."""

import json
import sys
import time
from pathlib import Path

import pytest
from runner_venv import VenvUnavailable, optimum_requirements, run_optimum, run_runner, runner_python

PROMPT = "What is the capital of France?"
RECIPES = ("int4-w4a16", "mxfp4-w4a16", "mxfp4-w4a4")
STEPS = 32


@pytest.fixture(scope="session")
def optimum_python():
    try:
        return runner_python("optimum-onnx", optimum_requirements())
    except VenvUnavailable as e:
        pytest.skip(f"optimum-onnx cannot be installed here: {e}")


def decoder_greedy(folder: Path, prompt: list[int], steps: int, stop: set[int]) -> tuple[list[int], float]:
    """Our Decoder on folder/model.onnx, greedy, ending after a stop token as generate does; tokens/s
    as the optimum runner counts them (new tokens after the first, over the time after the first)."""
    import qpasses.runtime
    from qpasses.evaluate.decoder import Decoder

    dec = Decoder(qpasses.runtime.session(folder / "model.onnx", threads=1))
    list(dec.stream(prompt, 2, stop=stop))  # warm-up, as the runner does
    tokens, times = [], []
    for token in dec.stream(prompt, steps, stop=stop):
        tokens.append(token)
        times.append(time.perf_counter())
    return tokens, (len(tokens) - 1) / (times[-1] - times[0]) if len(tokens) > 1 else 0.0


def assert_optimum_matches_decoder(folder: Path, steps: int = STEPS) -> dict:
    """optimum's greedy tokens from the unmodified folder == our Decoder's; returns both speeds."""
    from qpasses.evaluate.decoder import Chat
    from qpasses.runtime.ort import ort_settings

    folder = Path(folder)
    prompt = Chat(folder).prompt_ids(PROMPT, chat=True)
    eos = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    got = run_optimum(folder, prompt, steps, threads=1, config=ort_settings(folder / "model.onnx").config)
    want, tps = decoder_greedy(folder, prompt, steps, stop)
    assert got["tokens"] == want
    speeds = {"optimum_tokens_per_s": round(got["tokens_per_s"], 1), "decoder_tokens_per_s": round(tps, 1),
              "tokens": len(want)}
    print(f"\n{folder.name}: {speeds}", file=sys.stderr)
    return speeds


def compile_folder(out: Path, recipe: str, *model: str) -> Path:
    from qpasses.cli.main import main

    assert main(["run", *model, "--recipe", recipe, "--no-eval", "--no-layer-error", "--calib-windows", "16",
                 "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_optimum_generates_our_tokens_on_tiny_llama(recipe, optimum_python, tmp_path):
    folder = compile_folder(tmp_path / recipe, recipe, "--model", "tiny-llama")
    assert_optimum_matches_decoder(folder)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_optimum_generates_our_tokens_on_smollm2(recipe, optimum_python, tmp_path):
    folder = compile_folder(tmp_path / f"smollm2-{recipe}", recipe)  # the default model: SmolLM2-135M
    assert_optimum_matches_decoder(folder)


@pytest.mark.slow
def test_transformers_4_loads_the_hf_files(optimum_python, tmp_path):
    """Every family's folder files, as written by the deploy step, load in 4.x as in our 5.x."""
    from export.test_hf_files import SAMPLE, hf_folder
    from transformers import AutoTokenizer

    from qpasses.models.families import FAMILIES

    folders = {family: tmp_path / family for family in sorted(FAMILIES)}
    models = {family: hf_folder(family, folder) for family, folder in folders.items()}
    got = run_runner(optimum_python, "hf_load.py", SAMPLE, *map(str, folders.values()))
    assert got["transformers"].startswith("4.")
    for family, seen in got["folders"].items():
        model, ours = models[family], AutoTokenizer.from_pretrained(folders[family])
        rope = (getattr(model.config, "rope_parameters", None) or {}).get("rope_theta")
        if rope is None and getattr(model.config, "rope_parameters", None):  # one dict per layer type
            rope = model.config.rope_parameters["full_attention"]["rope_theta"]
        assert seen == {"config_class": type(model.config).__name__, "architectures": [type(model).__name__],
                        "rope_theta": rope, "sizes": [model.config.vocab_size, model.config.num_hidden_layers],
                        "use_cache": True, "eos_token_id": 2, "tokenizer_class": "PreTrainedTokenizerFast",
                        "ids": ours.encode(SAMPLE, add_special_tokens=False),
                        "special": [ours.bos_token, ours.eos_token, ours.pad_token], "chat_template": True}, family
