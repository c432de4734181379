"""Hugging Face optimum (optimum-onnx's ORTModelForCausalLM, transformers 4.x) runs a deployed folder
as is: greedy `generate` gives the tokens of our Decoder, and transformers 4.x loads the folder's
config.json, generation_config.json and tokenizer. optimum-onnx pins transformers < 4.58, ours is
5.x: it runs in its own cached venv (tests/runner_venv.py; about 2 minutes to build, once).

The user code is tests/runners/optimum_generate.py: it registers our library through
SessionOptions.register_custom_ops_library and passes `session_options=` to from_pretrained."""

import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runner_venv import VenvUnavailable, runner_python

RUNNERS = Path(__file__).resolve().parent / "runners"
RECIPES = ("int4-w4a16", "mxfp4-w4a16", "mxfp4-w4a4")
PROMPT = "What is the capital of France?"
STEPS = 32


def _ours(package: str) -> str:
    """Our installed version of `package` without a local tag (torch 2.13.0+cpu -> 2.13.0: pip takes
    the CPU wheel on this machine's disk for ==2.13.0)."""
    return importlib.metadata.version(package).split("+")[0]


def optimum_requirements() -> list[str]:
    """optimum-onnx with the transformers it accepts, and torch (transformers' generate needs it);
    onnxruntime as ours, so our library meets the onnxruntime it was built for."""
    return ["optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "tokenizers==0.22.2",
            "huggingface-hub==0.36.2", f"onnxruntime=={_ours('onnxruntime')}", f"onnx=={_ours('onnx')}",
            f"torch=={_ours('torch')}", f"numpy=={_ours('numpy')}"]


@pytest.fixture(scope="session")
def optimum_python():
    try:
        return runner_python("optimum-onnx", optimum_requirements())
    except VenvUnavailable as e:
        pytest.skip(f"optimum-onnx cannot be installed here: {e}")


def run_runner(python: Path, script: str, *args: str) -> dict:
    """Run tests/runners/`script` in the venv; its last stdout line is JSON."""
    done = subprocess.run([str(python), str(RUNNERS / script), *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def decoder_greedy(folder: Path, prompt: list[int], steps: int, stop: set[int]) -> tuple[list[int], float]:
    """Our Decoder on folder/model.onnx, greedy, ending after a stop token as generate does;
    tokens per second over the whole call (prefill included, as the optimum runner measures)."""
    import qpasses.runtime
    from qpasses.evaluate.decoder import Decoder

    dec = Decoder(qpasses.runtime.session(folder / "model.onnx", threads=1))
    list(dec.stream(prompt, 2, stop=stop))  # warm-up, as the runner does
    t = time.perf_counter()
    tokens = list(dec.stream(prompt, steps, stop=stop))
    return tokens, len(tokens) / (time.perf_counter() - t)


def assert_optimum_matches_decoder(python: Path, folder: Path, steps: int = STEPS) -> dict:
    """optimum's greedy tokens from the unmodified folder == our Decoder's; returns both speeds."""
    import qpasses.runtime
    from qpasses.evaluate.decoder import Chat
    from qpasses.runtime.ort import ort_settings

    folder = Path(folder)
    prompt = Chat(folder).prompt_ids(PROMPT, chat=True)
    eos = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
    stop = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    request = {"prompt": prompt, "steps": steps, "threads": 1,
               "config": ort_settings(folder / "model.onnx").config}
    got = run_runner(python, "optimum_generate.py", str(folder), str(qpasses.runtime.library_path()),
                     json.dumps(request))
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
    assert_optimum_matches_decoder(optimum_python, folder)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_optimum_generates_our_tokens_on_smollm2(recipe, optimum_python, tmp_path):
    folder = compile_folder(tmp_path / f"smollm2-{recipe}", recipe)  # the default model: SmolLM2-135M
    assert_optimum_matches_decoder(optimum_python, folder)


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
