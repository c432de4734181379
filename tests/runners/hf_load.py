"""Load deployed folders' Hugging Face files with the transformers of the venv this runs in (the
optimum venv: 4.x) and print what came out, one JSON object keyed by folder name; imports no qpasses.

    python hf_load.py SAMPLE_TEXT FOLDER...
"""

import json
import os
import sys


def describe(folder: str, sample: str) -> dict:
    from pathlib import Path

    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = Path(folder, "chat_template.jinja")
    return {
        "config_class": type(config).__name__,
        "architectures": config.architectures,
        "rope_theta": getattr(config, "rope_theta", None),
        "sizes": [config.vocab_size, config.num_hidden_layers],
        "use_cache": config.use_cache,
        "eos_token_id": generation.eos_token_id,
        "tokenizer_class": type(tokenizer).__name__,
        "ids": tokenizer.encode(sample, add_special_tokens=False),
        "special": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token],
        "chat_template": tokenizer.chat_template == (template.read_text() if template.is_file() else None),
    }


if __name__ == "__main__":
    import transformers

    sample, folders = sys.argv[1], sys.argv[2:]
    out = {os.path.basename(f.rstrip("/")): describe(f, sample) for f in folders}
    print(json.dumps({"transformers": transformers.__version__, "folders": out}))
