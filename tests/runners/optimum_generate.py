"""Greedy generation with Hugging Face optimum (ORTModelForCausalLM) from a deployed folder, as a
user would write it; run in the optimum venv (tests/runner_venv.py), so it imports no qpasses.

    python optimum_generate.py FOLDER LIBRARY '{"prompt": [ids], "steps": N, "threads": T, "config": {...}}'

`config`: the session config entries the folder README lists (the graphs' `qpasses.ort` metadata).

prints one JSON line: {"tokens": [new token ids], "tokens_per_s": decode speed, "transformers": version}.
"""

import json
import sys
import time


def main(folder: str, library: str, request: str) -> None:
    import onnxruntime
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    args = json.loads(request)
    options = onnxruntime.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = args.get("threads", 1)
    torch.set_num_threads(args.get("threads", 1))  # generate's own small torch ops: no thread pool to wake
    for key, value in args.get("config", {}).items():
        options.add_session_config_entry(key, value)
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, provider="CPUExecutionProvider")
    prompt = torch.tensor([args["prompt"]], dtype=torch.int64)
    steps = args["steps"]
    greedy = {"do_sample": False, "num_beams": 1, "max_new_tokens": steps, "min_new_tokens": 0}
    model.generate(prompt, attention_mask=torch.ones_like(prompt), **{**greedy, "max_new_tokens": 2})  # warm-up
    t = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **greedy)
    seconds = time.perf_counter() - t
    tokens = out[0, prompt.shape[1]:].tolist()
    print(json.dumps({"tokens": tokens, "tokens_per_s": len(tokens) / seconds,
                      "transformers": transformers.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
