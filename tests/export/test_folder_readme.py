"""The deployed folder's README lists the files the folder holds, no more."""

from types import SimpleNamespace

from qpasses.export.folder_readme import NO_DECODER, folder_readme

RECIPE = SimpleNamespace(name="int4-w4a16-rtn", description="INT4 weights")
LAYOUT = {"model.onnx", "decoder_model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
          "chat_template.jinja", "special_tokens_map.json", "report.md", "report.json", "manifest.json"}


def readme(files=None):
    return folder_readme("tiny", RECIPE, "0.1", {"config": {"k": "v"}}, {"", "qpasses"}, files=files)


def test_a_model_input_folder_lists_its_whole_layout():
    assert readme(LAYOUT) == readme()  # the README of a model input is the same as before `files`
    assert "| decoder_model.onnx |" in readme(LAYOUT) and NO_DECODER not in readme(LAYOUT)


def test_files_the_folder_lacks_are_not_listed():
    text = readme(LAYOUT - {"decoder_model.onnx", "chat_template.jinja"})
    assert "decoder_model" not in text.split("## Run it")[0] and "chat_template.jinja" not in text
    assert "| tokenizer.json, tokenizer_config.json | tokenizer and chat template |" in text
    assert "| model.onnx.data | the weights of model.onnx" in text
    assert NO_DECODER in text and "qpasses generate" not in text.replace(NO_DECODER, "")
    assert 'session("model.onnx")' in text
