"""Greedy generation with Hugging Face optimum (ORTModelForCausalLM) from a deployed folder, as a
user would write it; run in the optimum venv (tests/runner_venv.py), so it imports no qpasses.

    python optimum_generate.py FOLDER LIBRARY '{"prompt": [ids], "steps": N, "threads": T, "config": {...}}'

LIBRARY: our custom-op library ("" for a folder without custom ops); `config`: the session config
entries the folder README lists. Prints one JSON line: {"tokens": [new ids], "tokens_per_s": new
tokens after the first over the time after the first (the prefill not timed), "transformers": version}.
"""

import json
import sys
import time


class Clock:
    """A generate streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main(folder: str, library: str, request: str) -> None:
    import onnxruntime
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    args = json.loads(request)
    threads = args.get("threads", 1)
    options = onnxruntime.SessionOptions()
    if library:
        options.register_custom_ops_library(library)
    options.intra_op_num_threads = threads
    for key, value in args.get("config", {}).items():
        options.add_session_config_entry(key, value)
    torch.set_num_threads(threads)  # generate's own small torch ops: no thread pool to wake
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, provider="CPUExecutionProvider")
    prompt = torch.tensor([args["prompt"]], dtype=torch.int64)
    greedy = {"attention_mask": torch.ones_like(prompt), "do_sample": False, "num_beams": 1}
    model.generate(prompt, max_new_tokens=2, **greedy)  # warm-up
    clock = Clock()
    out = model.generate(prompt, max_new_tokens=args["steps"], streamer=clock, **greedy)
    tokens = out[0, prompt.shape[1]:].tolist()
    first, last = clock.times[1], clock.times[-1]  # times[0]: the prompt, put before any step
    speed = (len(tokens) - 1) / (last - first) if len(tokens) > 1 else 0.0
    print(json.dumps({"tokens": tokens, "tokens_per_s": speed, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
