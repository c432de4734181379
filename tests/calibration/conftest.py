"""Fixtures: the tiny llama exported once per test module, its linear sites, calibration windows,
and a brute-force oracle (forward pre-hooks on the Hugging Face linears)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fx_helpers import LogitsOnly

from qpasses.models.tiny import build_tiny_llama

N_WINDOWS, WINDOW = 6, 16  # 96 tokens; batch_size 4 gives batches of 4 and 2 windows


@pytest.fixture(scope="module")
def tiny():
    """hf: the eager model; ep: its export (dynamic batch and sequence); windows[6, 16];
    sites: weight fqn -> aten.linear node (15: 7 per layer + lm_head); module: weight fqn -> HF
    module name; layers: the sites grouped by decoder layer, then lm_head."""
    torch.manual_seed(0)
    hf = build_tiny_llama("tiny-llama")
    ids = torch.randint(3, 259, (2, 8))
    b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
    ep = torch.export.export(LogitsOnly(hf), (ids, torch.ones_like(ids)), dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    params = ep.graph_signature.inputs_to_parameters
    sites = {params[n.args[1].name]: n for n in ep.graph.nodes if n.target is torch.ops.aten.linear.default}
    module = {fqn: fqn.removeprefix("model.").removesuffix(".weight") for fqn in sites}
    layers = [{k: v for k, v in sites.items() if f".layers.{i}." in k} for i in range(2)]
    layers.append({k: v for k, v in sites.items() if "lm_head" in k})
    windows = torch.randint(3, 259, (N_WINDOWS, WINDOW), generator=torch.Generator().manual_seed(1))
    return SimpleNamespace(hf=hf, ep=ep, windows=windows, sites=sites, module=module, layers=layers)


def hooked_inputs(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """HF module name -> every input row of that nn.Linear over the windows, [tokens, K]."""
    rows: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def grab(_mod, args, name=name):
                rows.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
            hooks.append(mod.register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            for ids in windows.split(batch_size):
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def oracle():
    return hooked_inputs
