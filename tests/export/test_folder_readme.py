"""The deployed folder's README lists the files the folder holds, no more, and says where the
custom-op library is."""

from types import SimpleNamespace

from qpasses.export.folder_readme import LOGITS_GRAPH, NO_DECODER, STEP_GRAPH, folder_readme

RECIPE = SimpleNamespace(name="int4-w4a16-rtn", description="INT4 weights")
LAYOUT = {"model.onnx", "model.onnx.data", "libqpasses_ops.so", "genai_config.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "config.json",
          "generation_config.json", "report.md", "report.json", "manifest.json"}
RUNTIME = {"library": "libqpasses_ops.so", "platform": "linux-x86_64-glibc2.36", "in_folder": True}


def readme(files=None, **kw):
    return folder_readme("tiny", RECIPE, "0.1", {"config": {"k": "v"}}, {"", "qpasses"}, files=files, **kw)


def test_a_model_input_folder_lists_its_whole_layout():
    assert readme(LAYOUT, runtime=RUNTIME) == readme(runtime=RUNTIME)  # a model input's folder holds every file
    text = readme(LAYOUT, runtime=RUNTIME)
    assert STEP_GRAPH in text and NO_DECODER not in text
    assert "built for linux-x86_64-glibc2.36" in text and "(it is in this folder)" in text
    assert 'register_custom_ops_library("FOLDER/libqpasses_ops.so")' in text
    assert "ORTModelForCausalLM.from_pretrained(\"FOLDER\", session_options=so)" in text
    assert "ORTModelForCausalLM" not in readme(LAYOUT - {"config.json"}, runtime=RUNTIME).split("| report.md")[1]


def test_files_the_folder_lacks_are_not_listed():
    text = readme(LAYOUT - {"libqpasses_ops.so", "chat_template.jinja"}, step_graph=False,
                  runtime={**RUNTIME, "in_folder": False})
    assert "| libqpasses_ops.so |" not in text and "chat_template.jinja" not in text
    assert "| tokenizer.json, tokenizer_config.json | tokenizer and chat template |" in text
    assert LOGITS_GRAPH in text and STEP_GRAPH not in text
    assert NO_DECODER in text and "qpasses generate" not in text.replace(NO_DECODER, "")
    assert "--no-runtime-copy" in text and "/path/to/libqpasses_ops.so" in text
    assert 'session("model.onnx")' in text


def test_the_readme_names_the_oldest_onnxruntime_and_why():
    text = folder_readme("tiny", RECIPE, "0.1", {}, {""}, ort_min={"version": "1.22", "reasons": ["GQA input 11"]})
    assert "onnxruntime 1.22 or newer (GQA input 11; `qpasses doctor .`" in text
    assert "1.17 or newer" not in text and "or newer" not in readme()
