"""The CLI end to end on tiny-llama: every built-in recipe, the ONNX-input path, eval, bad input."""

import json
import shutil
from pathlib import Path

import onnx
import pytest

from qpasses.cli.main import main
from qpasses.recipe import COMPOSED, MOVED_TO_BENCH, builtin_recipes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "recipes"
TEXT = "The GNU coding standards were written by Richard Stallman and other GNU Project volunteers. " * 60


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(TEXT)
    return path


def run(*args):
    return main(["run", "--model", "tiny-llama", "--no-progress", *map(str, args)])


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory, text):
    out = tmp_path_factory.mktemp("runs") / "int4"
    assert run("--recipe", "int4-w4a16-rtn", "--eval-windows", 2, "--text", text, "--out", out) == 0
    return out


def report(out):
    return json.loads((out / "report.json").read_text())


def test_run_writes_the_deployment_and_a_complete_report(int4_run):
    names = {p.name for p in int4_run.iterdir()}
    assert {"model.onnx", "model.onnx.data", "libqpasses_ops.so", "report.json", "report.md", "tokenizer.json",
            "README.md", "config.json", "generation_config.json"} <= names and "decoder_model.onnx" not in names
    assert json.loads((int4_run / "manifest.json").read_text())["runtime"]["in_folder"] is True
    assert "register_custom_ops_library" in (int4_run / "README.md").read_text()  # it uses our ops
    r = report(int4_run)
    for key in ("ppl_fp", "ppl_stage_a", "ppl_quant", "eval_tokens", "onnx_bytes", "fp32_onnx_bytes", "passes",
                "quantize_seconds", "bits_per_weight", "peak_rss_bytes", "versions"):
        assert key in r, key
    assert r["eval_tokens"] == 2 * 511
    assert r["unquantized_sites"] == [{"name": "lm_head", "shape": [512, 64],
                                       "reason": "ignored by recipe pattern 'lm_head'"}]
    assert r["ppl_quant"] == pytest.approx(r["ppl_stage_a"], rel=1e-4)
    assert r["ppl_stage_a"] != pytest.approx(r["ppl_fp"], rel=1e-6)  # quantization did something
    assert [p["name"] for p in r["passes"]] == ["quantize_weights", "export_onnx", "lower_linears", "fuse_linears",
                                                "fuse_norms", "fuse_attention"]
    rewrites = [p["rewrites"] for p in r["passes"]]
    assert rewrites[0] == {"rtn.int4_sym_g128": 14}  # 2 layers x 7 linears; lm_head ignored
    assert rewrites[3:] == [{"fuse.MatMulInt4x3": 2, "fuse.MatMulInt4x2": 2},  # q/k/v and gate/up per layer
                            {"fuse.skip_rms_norm": 4}, {"fuse.group_query_attention": 2, "past_length.from_mask": 2}]


def test_eval_json_matches_the_report(int4_run, text, capsys):
    capsys.readouterr()
    assert main(["eval", str(int4_run / "model.onnx"), "--windows", "2", "--text", str(text), "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 2 * 511
    assert out["ppl"] == pytest.approx(report(int4_run)["ppl_quant"], rel=1e-6)


def test_generate_talks_from_the_deployed_folder(int4_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(int4_run), "--prompt", "hello", "--max-tokens", "5", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "prompt tokens" in err and "new tokens" in err
    assert main(["generate", str(int4_run), "--prompt", "hello", "--raw", "--max-tokens", "3",
                 "--temperature", "0.8"]) == 0


def test_generate_on_a_folder_without_a_decoder_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "model.onnx" in error_line(capsys)


def test_doctor_checks_every_kernel_path(capsys):
    from qpasses.runtime import available_isas

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert all(f"[  ok] kernels, {isa}:" in out for isa in available_isas()), out


def test_doctor_says_what_to_do_when_the_library_is_missing(capsys, monkeypatch):
    monkeypatch.setenv("QPASSES_RUNTIME_LIBRARY", "/no/such/libqpasses_ops.so")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] runtime library" in out and "what to do: ./dev setup" in out


def test_recipes_lists_every_builtin(capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in builtin_recipes())


# every built-in but the one int4_run covers, and two bench recipes for the rotation-only and
# smoothing-ladder checks below
DEPLOYED = sorted(set(builtin_recipes()) - {"int4-w4a16-rtn"}) + ["rotate-hadamard", "mxfp4-w4a4-smoothrot"]


@pytest.mark.parametrize("recipe", DEPLOYED)
def test_every_builtin_recipe_deploys_what_stage_a_computed(recipe, text, tmp_path):
    ref = BENCH / f"{recipe}.toml" if recipe in MOVED_TO_BENCH else recipe
    assert run("--recipe", ref, "--eval-windows", 1, "--text", text, "--no-layer-error",
               "--out", tmp_path / recipe) == 0
    r = report(tmp_path / recipe)
    if "smoothrot" in recipe:  # the ladder of scale policies is recorded
        assert "heldout_error" in (tmp_path / recipe / "manifest.json").read_text()
    assert r["ppl_quant"] == pytest.approx(r["ppl_stage_a"], rel=2e-3), recipe
    if recipe in COMPOSED:  # every linear, the lm_head and the tied embedding are quantized: nothing left in fp32
        rewrites = {k: v for p in r["passes"] for k, v in p["rewrites"].items()}
        assert rewrites["embedding.tied"] == 1 and rewrites["gather.block_quantized"] == 1, rewrites
        assert sum(v for k, v in rewrites.items() if k.startswith("gptq+piso.")) == 15, rewrites  # 14 + lm_head
    if recipe in COMPOSED or recipe == "fp":  # all quantized; fp quantizes nothing, so keeps nothing on purpose
        assert r["unquantized_sites"] == []
    if recipe == "fp" or recipe.startswith("rotate-"):  # function-preserving
        assert r["ppl_stage_a"] == pytest.approx(r["ppl_fp"], rel=1e-5)


def test_stage_a_eval_can_be_skipped(text, tmp_path):
    assert run("--recipe", BENCH / "mxfp4-w4a4-online.toml", "--eval-windows", 1, "--text", text, "--no-stage-a-eval",
               "--out", tmp_path / "x") == 0
    r = report(tmp_path / "x")
    assert r["ppl_stage_a"] is None and r["ppl_quant"] > 0


def test_onnx_input_runs_weight_only_rtn(tmp_path, text):
    assert run("--recipe", "fp", "--no-eval", "--out", tmp_path / "fp") == 0
    out = tmp_path / "from-onnx"
    assert main(["run", "--model", str(tmp_path / "fp" / "model.onnx"), "--recipe", "int4-w4a16-rtn", "--out", str(out),
                 "--eval-windows", "1", "--text", str(text), "--no-progress"]) == 0
    r = report(out)
    assert r["ppl_stage_a"] is None and r["ppl_fp"] is not None and r["ppl_quant"] is not None
    assert r["passes"][0]["rewrites"] == {"rtn.int4_sym_g128": 14}


def test_max_context_caps_the_rotary_tables_and_says_so(tmp_path, capsys):
    out = tmp_path / "short"
    assert run("--recipe", "int4-w4a16-rtn", "--no-eval", "--no-layer-error", "--max-context", 64, "--out", out) == 0
    decoder = onnx.load(out / "model.onnx", load_external_data=False)
    assert {t.name: list(t.dims) for t in decoder.graph.initializer if t.name.startswith("qpasses.rope.")} == {
        "qpasses.rope.cos": [64, 16], "qpasses.rope.sin": [64, 16]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["max_context"] == {"model": 2048, "recipe": None, "cap": 64, "rotary_rows": 64}
    readme = (out / "README.md").read_text()
    assert "decodes up to 64 positions" in readme
    assert "max_position_embeddings (2048), capped by --max-context 64" in readme
    # the oldest onnxruntime (GroupQueryAttention's attention_bias: 1.22) in the manifest, metadata, README
    assert manifest["onnxruntime_min"]["version"] == "1.22"
    meta = {p.key: p.value for p in decoder.metadata_props}
    assert json.loads(meta["qpasses.onnxruntime_min"]) == manifest["onnxruntime_min"]
    assert "onnxruntime 1.22 or newer (" in readme
    # generate stops at the last position the tables serve, and refuses a prompt that does not fit
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "x" * 40, "--raw", "--max-tokens", "100", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "40 prompt tokens" in err and "24 new tokens" in err and "context limit, 64 positions" in err
    assert main(["generate", str(out), "--prompt", "x" * 64, "--raw"]) == 2
    assert "the prompt has 64 tokens" in error_line(capsys)


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("qpasses: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_existing_output_is_refused_without_force(int4_run, capsys):
    assert run("--no-eval", "--out", int4_run) == 2
    assert "--force" in error_line(capsys)


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model"], "no/such/model"),
    (["--model", "gpt-17"], "gpt-17"),
    (["--recipe", "no-such-recipe"], "unknown recipe"),
    (["--set", "quantize_weights.ignore=7"], "ignore must be a list"),
    (["--set", "quantize_weights.block_size=7"], "block_size 7"),
    (["--set", "quantize_weights.ignore_me=1"], "has no setting ignore_me"),
    (["--max-context", "0"], "--max-context must be a positive number"),
    (["--set", "fuse_attention.max_positions=0"], "max_positions must be a positive number"),
])
def test_bad_input_is_one_clear_line_and_leaves_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--no-eval", "--no-progress", "--recipe", "int4-w4a16-rtn", "--out", str(out), *args]) == 2
    assert message in error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("where, message", [("afile", "is a file"), ("afile/sub", "a file is in the way"),
                                            ("/proc/qpasses-out", "cannot write the output folder")])
def test_unwritable_output_is_one_line_before_any_work(where, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    out = where if where.startswith("/") else str(tmp_path / where)
    assert main(["run", "--model", "tiny-llama", "--recipe", "int4-w4a16-rtn", "--no-eval", "--no-progress",
                 "--out", out]) == 2
    assert message in error_line(capsys)
    assert (tmp_path / "afile").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_kill_while_writing_leaves_nothing_under_the_final_name(tmp_path):
    """SIGKILL once the staging folder exists: the final name never holds a partial folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "qpasses.cli.main", "run", "--model", "tiny-llama", "--recipe",
                             "int4-w4a16-rtn", "--no-eval", "--no-progress", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".out.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    staging = list(tmp_path.glob(".out.*.tmp"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staging, "the run ended before its staging folder was seen"
    assert not out.exists()


def test_graph_with_no_matching_site_is_an_error(int4_run, tmp_path, capsys):
    """An already-lowered model has no float linears left (lm_head is ignored): zero rewrites is an error."""
    out = tmp_path / "again"
    assert main(["run", "--model", str(int4_run / "model.onnx"), "--recipe", "int4-w4a16-rtn", "--no-eval",
                 "--out", str(out), "--no-progress"]) == 2
    assert "rewrote nothing" in error_line(capsys)
    assert not out.exists()


def test_a_linear_left_in_float_unasked_is_one_line(tmp_path, capsys, monkeypatch):
    """No silent fp32: a site the recipe quantizes that no weight pass planned stops the run after lowering."""
    from qpasses.passes import quantize_weights

    def select(sites, ignore):  # a weight pass that misses one linear, as one that cannot see it would
        return [s for s in real(sites, ignore) if s.name != "model.layers.0.self_attn.q_proj"]

    real = quantize_weights.select
    monkeypatch.setattr(quantize_weights, "select", select)
    out = tmp_path / "out"
    assert run("--recipe", "int4-w4a16-rtn", "--no-eval", "--no-layer-error", "--out", out) == 2
    line = error_line(capsys)
    assert "1 linear(s) the recipe quantizes are still float matmuls" in line
    assert "model.layers.0.self_attn.q_proj [64x64]" in line and "lm_head" not in line
    assert not out.exists()


def test_bert_style_encoder_gets_weight_only_rtn(tmp_path, capsys):
    """Linear sites are found by pattern, not Llama names: an encoder's linears are lowered too."""
    from qpasses.models.tiny import save_tiny_bert

    folder = save_tiny_bert(tmp_path / "tiny-bert")
    out = tmp_path / "bert-int4"
    base = ["run", "--model", str(folder), "--recipe", "int4-w4a16-rtn", "--out", str(out), "--no-progress",
            "--set", "quantize_weights.block_size=32"]
    assert main(base) == 2
    assert "not a causal language model" in error_line(capsys)
    assert main([*base, "--no-eval"]) == 0
    r = report(out)
    assert r["passes"][0]["rewrites"] == {"rtn.int4_sym_g32": 7}  # q, k, v, attention out, intermediate, output, pooler
    # the pooler does not feed the exported output (last_hidden_state): the ONNX graph has 6 linears
    assert next(p for p in r["passes"] if p["name"] == "lower_linears")["rewrites"] == {"qpasses.matmul.nk": 6}


@pytest.mark.slow
def test_smollm2_end_to_end(tmp_path):
    """The real model, 2 windows: the deployed file (our runtime ops) computes what stage A computed."""
    out = tmp_path / "smollm2"
    assert main(["run", "--recipe", "int4-w4a16-rtn", "--eval-windows", "2", "--out", str(out), "--no-progress"]) == 0
    r = report(out)
    assert r["passes"][0]["rewrites"] == {"rtn.int4_sym_g128": 210}
    assert r["ppl_quant"] == pytest.approx(r["ppl_stage_a"], rel=1e-3)
    assert r["onnx_bytes"] < 0.34 * r["fp32_onnx_bytes"]


def test_a_failure_after_export_leaves_nothing_behind(tmp_path, text, monkeypatch, capsys):
    """The folder appears whole (model, manifest, report) or not at all."""
    from qpasses.errors import InputError
    from qpasses.evaluate.measure import Evaluator

    def broken(self, path, label):
        if label.startswith("deployed"):
            raise InputError("onnxruntime cannot load the deployed file (simulated)")
        return None

    monkeypatch.setattr(Evaluator, "ort", broken)
    out = tmp_path / "out"
    assert run("--recipe", "int4-w4a16-rtn", "--eval-windows", 1, "--text", text, "--out", out) == 2
    assert "simulated" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def _doctor_folder(tmp_path, need=None):
    """A folder holding one tiny graph (GroupQueryAttention with 11 inputs: onnxruntime >= 1.22),
    with a `qpasses.onnxruntime_min` metadata entry `need` when given."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from qpasses.runtime.min_ort import METADATA_KEY

    node = helper.make_node("GroupQueryAttention", ["x"] * 7 + ["", "", "", "x"], ["y"], domain="com.microsoft",
                            num_heads=1, kv_num_heads=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    if need:
        helper.set_model_props(model, {METADATA_KEY: json.dumps({"version": need, "reasons": ["a reason"]})})
    onnx.save(model, str(tmp_path / "model.onnx"))
    return tmp_path


def test_doctor_checks_a_folder_against_its_graphs_need(tmp_path, capsys):
    import onnxruntime as ort

    from qpasses.cli.doctor import Report, check_folder

    rep = Report()
    assert check_folder(rep, _doctor_folder(tmp_path))
    assert check_folder(rep, tmp_path / "model.onnx")
    out = capsys.readouterr().out
    assert (f"[  ok] graphs of {tmp_path}: need onnxruntime >= 1.22 (from the graphs: GroupQueryAttention's inputs "
            f"10-11") in out and f"{ort.__version__} is installed" in out
    assert not check_folder(rep, _doctor_folder(tmp_path, need="99.0"))
    out = capsys.readouterr().out
    assert "need onnxruntime >= 99.0 (from the metadata: a reason)" in out
    assert "what to do: pip install 'onnxruntime>=99.0'" in out
    assert not check_folder(rep, tmp_path / "nothing")
    assert f"{tmp_path / 'nothing'} does not exist" in capsys.readouterr().out


def test_doctor_takes_a_folder_argument(tmp_path, capsys):
    assert main(["doctor", str(_doctor_folder(tmp_path, need="99.0"))]) == 1
    assert "what to do: pip install 'onnxruntime>=99.0'" in capsys.readouterr().out


def test_doctor_names_the_library_a_folder_lacks(int4_run, tmp_path, capsys):
    from qpasses.cli.doctor import Report, check_folder_library

    rep = Report()
    assert check_folder_library(rep, int4_run)
    copy = shutil.copytree(int4_run, tmp_path / "copy", ignore=shutil.ignore_patterns("libqpasses_ops.so"))
    assert not check_folder_library(rep, copy)
    out = capsys.readouterr().out
    assert f"[FAIL] library of {copy}: model.onnx uses the qpasses ops but {copy / 'libqpasses_ops.so'} does not " \
           "exist" in out and "what to do: copy it there" in out
