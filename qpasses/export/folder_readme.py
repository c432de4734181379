"""README.md of a deployed folder: what the files are and how to run them, from Python and from
C/C++ onnxruntime. Written before the report, so the folder's size counts it; the figures are in
report.md."""

from __future__ import annotations

import json

from qpasses.domain import DOMAIN
from qpasses.runtime import LIBRARY_NAME

NO_DECODER = ("This folder's model.onnx has no KV cache (it was compiled from an ONNX file without one), so "
              "`qpasses generate` and the generation runners cannot run it. To generate, compile the Hugging Face "
              "model or its GGUF instead.")
STEP_GRAPH = ("| model.onnx | KV-cache step graph: input_ids, attention_mask [batch, past + seq], position_ids, "
              "past_key_values.{i}.key/value [batch, kv_heads, past, head_dim] -> logits, present.{i}.key/value "
              "(an empty past runs a whole sequence) |")
GENAI = ["onnxruntime-genai (reads genai_config.json; loads the library from this folder):", "", "```python",
         "import onnxruntime_genai as og",
         "model = og.Model(\"FOLDER\"); tokenizer = og.Tokenizer(model)",
         "params = og.GeneratorParams(model); params.set_search_options(max_length=256)",
         "generator = og.Generator(model, params); generator.append_tokens(tokenizer.encode(\"Hello\"))",
         "while not generator.is_done(): generator.generate_next_token()",
         "print(tokenizer.decode(generator.get_sequence(0)))", "```", ""]
OPTIMUM = ["Hugging Face optimum (optimum-onnx; reads config.json and generation_config.json; `so` as above):", "",
           "```python", "from optimum.onnxruntime import ORTModelForCausalLM",
           "from transformers import AutoTokenizer",
           "model = ORTModelForCausalLM.from_pretrained(\"FOLDER\", session_options=so)",
           "tokenizer = AutoTokenizer.from_pretrained(\"FOLDER\")",
           "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Hello\"}], "
           "add_generation_prompt=True, return_tensors=\"pt\")",
           "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0]))", "```", ""]
LOGITS_GRAPH = "| model.onnx | logits graph: input_ids, attention_mask [batch, seq] -> logits [batch, seq, vocab] |"


def folder_readme(model: str, recipe, version: str, ort: dict, domains: set[str],
                  max_context: dict | None = None, files: set[str] | None = None, step_graph: bool = True,
                  runtime: dict | None = None, ort_min: dict | None = None) -> str:
    """`recipe`: the Recipe run; `ort`: the session settings of the graph's `qpasses.ort` metadata;
    `domains`: the operator domains the graph imports; `max_context`: the manifest's record of the
    decoder's rotary tables (fuse_attention; empty or None: no tables, no limit to state); `files`:
    the names the finished folder holds, which are all the table lists (None: every file of a model
    input's layout); `step_graph`: model.onnx is the KV-cache step graph (else a logits graph);
    `runtime`: the manifest's record of the custom-op library (file, platform, in the folder);
    `ort_min`: the manifest's `onnxruntime_min` (version and reasons)."""
    config = ort.get("config") or {}
    custom = DOMAIN in domains
    runtime = runtime or {}
    shipped = custom and runtime.get("in_folder", True)
    library = f"FOLDER/{LIBRARY_NAME}" if shipped else f"/path/to/{LIBRARY_NAME}"  # dlopen needs a path, not a name
    lines = [
        f"# {model}, recipe `{recipe.name}`",
        "",
        recipe.description,
        "",
        f"Written by qpasses {version}. Accuracy, size, time and memory: report.md.",
        "",
        "| file | what |",
        "|---|---|",
        STEP_GRAPH if step_graph else LOGITS_GRAPH,
        "| model.onnx.data | its weights (external data; keep it next to model.onnx) |",
        f"| {LIBRARY_NAME} | the custom-op library the graph needs, built for "
        f"{runtime.get('platform', 'this platform')} (other platforms: compile with a stock-op lowering target) |",
        "| genai_config.json | onnxruntime-genai's configuration: I/O names, KV shapes, library, search defaults |",
        "| tokenizer.json, tokenizer_config.json, chat_template.jinja | tokenizer and chat template |",
        "| config.json, generation_config.json | Hugging Face model and generation settings (transformers 4.x and "
        "5.x; what optimum's ORTModelForCausalLM reads) |",
        "| report.md, report.json, manifest.json | accuracy, size, speed; the recipe as run and tool versions |",
        "",
        "## Run it",
        "",
    ]
    if files is not None:
        lines = [row for line in lines for row in [_listed(line, files)] if row is not None]
    if not step_graph:
        lines += [NO_DECODER, ""]
    if custom:
        lines += [
            f"The graph uses the `{DOMAIN}` custom ops (MatMulMXFP4 / MatMulInt4); onnxruntime needs the",
            f"library `{LIBRARY_NAME}` registered before it loads the model"
            + (" (it is in this folder)." if shipped else " (not copied here: --no-runtime-copy).")
            + " With qpasses installed:",
        ]
    else:
        lines += ["The graph uses standard onnxruntime ops only (no custom-op library needed). With qpasses:"]
    lines += [
        "",
        "```bash",
        *(["qpasses generate . --prompt \"What is the capital of France?\"   # chat, greedy, streamed"] * step_graph),
        "qpasses eval model.onnx --windows 20                             # perplexity",
        "```",
        "",
        "```python",
        "import qpasses.runtime",
        "sess = qpasses.runtime.session(\"model.onnx\")  "
        "# an onnxruntime.InferenceSession" + (", our ops registered" if custom else ""),
        "```",
        "",
        "Plain onnxruntime (Python):",
        "",
        "```python",
        "import onnxruntime as ort",
        "so = ort.SessionOptions()",
    ]
    if custom:
        lines.append(f"so.register_custom_ops_library(\"{library}\")" + ("  # FOLDER: this folder's path" if shipped
                     else "  # python -c 'import qpasses.runtime as r; print(r.library_path())'"))
    lines += [f"so.add_session_config_entry({k!r}, {v!r})" for k, v in sorted(config.items())]
    lines += ["sess = ort.InferenceSession(\"FOLDER/model.onnx\", so, providers=[\"CPUExecutionProvider\"])", "```", ""]
    if files is None or "genai_config.json" in files:
        lines += GENAI
    if step_graph and (files is None or "config.json" in files):
        lines += OPTIMUM
    lines += [*minimum_lines(ort_min), "C/C++ (onnxruntime C++ API; a whole greedy generator: qpasses' examples/cpp):",
              "", "```cpp", "Ort::Env env;",
              "Ort::SessionOptions so;"]
    if custom:
        lines.append(f"so.RegisterCustomOpsLibrary(ORT_TSTR(\"{library}\"));")
    lines += [f"so.AddConfigEntry(\"{k}\", \"{v}\");" for k, v in sorted(config.items())]
    lines += ["Ort::Session session(env, ORT_TSTR(\"FOLDER/model.onnx\"), so);", "```", ""]
    if custom:
        lines += [f"`{LIBRARY_NAME}` exports `RegisterCustomOps` (the C API's custom-op entry point); it picks the",
                  "AVX-512, AVX2 or scalar kernels when a session is created "
                  "(`QPASSES_ISA=scalar|avx2|avx512` forces one).", ""]
    lines += ["Session settings the compiler chose (also in the graph's `qpasses.ort` metadata):",
              f"`{json.dumps(ort) if ort else 'none'}`.", ""]
    lines += context_lines(max_context or {})
    return "\n".join(lines)


def minimum_lines(ort_min: dict | None) -> list[str]:
    """The oldest onnxruntime (Python or C/C++) the graphs run on, and why; nothing when unknown."""
    if not ort_min:
        return []
    why = "; ".join(ort_min.get("reasons", []))
    return [f"Python or C/C++: onnxruntime {ort_min['version']} or newer ({why}; `qpasses doctor .` checks "
            "the installed one).", ""]


def _listed(line: str, files: set[str]) -> str | None:
    """A row of the file table with only the files the folder holds (None: it holds none of them);
    any other line unchanged."""
    if not line.startswith("| ") or line.startswith("| file |"):
        return line
    first, rest = line[2:].split(" | ", 1)
    names = [n for n in first.split(", ") if n in files]
    if not names:
        return None
    return f"| {', '.join(names)} | {rest}"


def context_lines(record: dict) -> list[str]:
    """How many positions the decoder serves, and where the number comes from."""
    rows = record.get("rotary_rows")
    if not rows:
        return []
    model, setting, cap = record.get("model"), record.get("recipe"), record.get("cap")
    if setting:
        why = f"the recipe's fuse_attention.max_positions ({setting})"
    elif model:
        why = f"the model's max_position_embeddings ({model})"
    else:
        why = "qpasses' default: the input's max_position_embeddings is not known"
    if cap == rows and cap != (setting or model):
        why += f", capped by --max-context {cap}"
    return ["## Context length", "",
            f"model.onnx decodes up to {rows} positions (position_ids 0 to {rows - 1}, the rows of its "
            f"rotary tables): {why}. onnxruntime refuses a position beyond them.", ""]
