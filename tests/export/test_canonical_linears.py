"""canonicalize_linears: GPT-2's Conv1D and Falcon's `x @ W.T` become aten.linear sites named
after their modules, and the rewritten programs compute what the model computes."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from qpasses.export.capture import capture
from qpasses.ir.fx_stage import FxStage
from qpasses.models.families import build_family

aten = torch.ops.aten
PRODUCTS = {aten.matmul.default, aten.mm.default, aten.addmm.default}


@pytest.fixture(scope="module", params=["gpt2", "falcon"])
def family(request):
    model, _ = build_family(request.param)
    return model, capture(model)


def parameter_products(ep) -> list[str]:
    """Products whose right operand is (a transpose of) a parameter: none may be left."""
    params = ep.graph_signature.inputs_to_parameters
    left = []
    for node in ep.graph.nodes:
        if node.target in PRODUCTS:
            w = node.args[-1]
            src = w.args[0] if w.op == "call_function" and w.args else w
            if isinstance(src, torch.fx.Node) and src.name in params:
                left.append(node.name)
    return left


def test_rewritten_programs_compute_what_the_model_computes(family):
    model, programs = family
    ids = torch.randint(3, 259, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(programs.logits.module()(ids, mask), want, atol=1e-5, rtol=0)
        cache = model(input_ids=ids[:, :4], use_cache=True).past_key_values
        past = [(layer.keys, layer.values) for layer in cache.layers]
        logits, _ = programs.decoder.module()(ids[:, 4:], mask, torch.arange(4, 7).repeat(2, 1), past)
    torch.testing.assert_close(logits, want[:, 4:], atol=1e-5, rtol=0)
    for ep in programs.programs().values():
        assert parameter_products(ep) == []


def test_sites_are_the_models_linear_modules_by_name(family):
    model, programs = family
    modules = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    sites = {s.name: s for s in FxStage(programs).sites()}
    assert set(sites) == set(modules)
    for name, site in sites.items():
        m = modules[name]
        n_k = (m.nf, m.nx) if isinstance(m, Conv1D) else (m.out_features, m.in_features)
        assert site.shape == n_k
        assert sorted(p for p, _ in site.uses) == ["decoder", "logits"]
        w = m.weight.detach().numpy()
        assert (site.weight() == (w.T if isinstance(m, Conv1D) else w)).all()
        if m.bias is not None:
            assert (site.bias() == m.bias.detach().numpy()).all()
    # the model keeps its own Conv1D layout; the programs hold a transpose
    assert all(tuple(m.weight.shape) == (m.nx, m.nf) for m in modules.values() if isinstance(m, Conv1D))


class Products(torch.nn.Module):
    """Every product form: x @ Pᵀ + b, addmm(b, x, Pᵀ), mm(x, Pᵀ), Conv1D's addmm, x @ P, and a
    matrix read both ways, which must stay as it is."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.nk, self.kn, self.b = (torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((6, 4), (4, 6), (6,)))
        self.both = torch.nn.Parameter(torch.randn(4, 4, generator=g))

    def forward(self, x):
        flat = x.view(-1, 4)
        ys = [x @ self.nk.T + self.b, torch.addmm(self.b, flat, self.nk.permute(1, 0)), torch.mm(flat, self.nk.t()),
              torch.addmm(self.b, flat, self.kn).view(*x.shape[:-1], 6), x @ self.kn, x @ self.both + self.both[0]]
        return [y.reshape(-1) for y in ys]


def test_every_product_form_becomes_a_linear_with_the_same_output():
    from qpasses.export.canonical_linears import canonicalize_linears
    from qpasses.export.capture import Programs

    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    ep = torch.export.export(Products(), (x,), strict=False)
    want = ep.module()(x)
    programs = Programs(ep, None)
    canonicalize_linears(programs)
    for got, y in zip(ep.module()(x), want, strict=True):
        torch.testing.assert_close(got, y, atol=1e-6, rtol=0)
    linears = [n for n in ep.graph.nodes if n.target is aten.linear.default]
    assert len(linears) == 5
    assert parameter_products(ep) == [next(n.name for n in ep.graph.nodes if n.target is aten.matmul.default)]
    assert tuple(programs.parameter("kn").shape) == (6, 4) and tuple(programs.parameter("both").shape) == (4, 4)
    assert all(n.op != "call_function" or n.users or n.is_impure() for n in ep.graph.nodes)  # nothing dead left
