"""Where the INT4 cost of SmolLM2's tied embedding/lm_head table comes from: round to nearest on the
embedding use only, the lm_head use only, or both (the table untied in memory), in torch, first 20 windows.

    .venv/bin/python bench/table_cost.py          # about 10 minutes at 1 thread

Prints one perplexity per variant and saves the table to bench/results/smollm2-135m/table_cost.md.
"""

from pathlib import Path

import torch

from qpasses.data.texts import debian_text
from qpasses.data.windows import eval_windows, tokenize_text
from qpasses.evaluate.perplexity import perplexity, torch_logits_fn
from qpasses.formats import WeightFormat, dequantize_weight, quantize_weight
from qpasses.load import load_model


def main() -> None:
    torch.set_num_threads(1)
    loaded = load_model("smollm2-135m")
    model = loaded.model
    windows = eval_windows(tokenize_text(loaded.tokenizer, debian_text("eval")), 20)
    w = model.model.embed_tokens.weight.detach().clone()

    def rtn(block: int) -> torch.Tensor:
        return torch.from_numpy(dequantize_weight(quantize_weight(w.numpy(), WeightFormat("int4", block, True))))

    model.lm_head.weight = torch.nn.Parameter(w.clone())  # untie, so each use can differ
    rows = []
    for name, emb, head in [("float", w, w), ("embedding g64", rtn(64), w), ("lm_head g64", w, rtn(64)),
                            ("both g64", rtn(64), rtn(64)), ("lm_head g32", w, rtn(32)), ("embedding g32", rtn(32), w)]:
        model.model.embed_tokens.weight.data.copy_(emb)
        model.lm_head.weight.data.copy_(head)
        ppl = perplexity(torch_logits_fn(model), windows, desc=name).ppl
        print(f"{name}: {ppl:.4f}", flush=True)
        rows.append(f"| {name} | {ppl:.4f} |")
    out = Path(__file__).resolve().parent / "results" / "smollm2-135m" / "table_cost.md"
    out.write_text("\n".join([
        "# The tied table's INT4 cost, by use", "",
        "Made by `bench/table_cost.py`: SmolLM2-135M-Instruct in torch, the tied embedding / lm_head "
        "untied in memory, round to nearest (INT4 symmetric) on one use or both; perplexity on the "
        "first 20 x 512 windows of the evaluation text, 1 thread.", "",
        "| variant | ppl (20 windows) |", "|---|---|", *rows, ""]))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
