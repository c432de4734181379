import onnx
import pytest
import torch
from gram_check import assert_gram_close

from qpasses.calibration import StatsSpec, collect_fx, collect_onnx

QS = (0.9, 0.99)
SPEC = StatsSpec(quantiles=QS, max_tokens=128, gram=True, keep_tokens=32)


@pytest.fixture(scope="module")
def fx_stats(tiny):
    return collect_fx(tiny.ep, tiny.sites, tiny.windows, SPEC, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def onnx_file(tiny, tmp_path_factory):
    """The same program exported to ONNX, and weight fqn -> the value feeding its linear:
    the first input of MatMul(x, Transpose(W)) with W the initializer named like the parameter."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    ids = tiny.windows[:2]
    torch.onnx.export(tiny.ep, (ids, torch.ones_like(ids)), str(path), dynamo=True, opset_version=21, optimize=False)
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    sites = {}
    for node in graph.node:
        w = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and w.op_type == "Transpose" and w.input[0] in inits:
            sites[w.input[0]] = node.input[0]
    return path, sites


def test_fx_stats_equal_a_brute_force_from_hf_hooks(tiny, fx_stats, oracle):
    rows = oracle(tiny.hf, tiny.windows)
    assert set(fx_stats) == set(tiny.sites) and len(fx_stats) == 15
    for fqn, s in fx_stats.items():
        x = rows[tiny.module[fqn]]
        x64 = x.double()
        assert s.count == x.shape[0] == tiny.windows.numel()
        torch.testing.assert_close(s.mean, x64.mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(s.var, x64.var(0, correction=0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s.absmax, x.abs().amax(0), rtol=0, atol=1e-6)
        assert_gram_close(s.gram, x64.T @ x64)
        for q in QS:
            torch.testing.assert_close(s.quantile(q), torch.quantile(x.abs(), q, dim=0), rtol=0, atol=1e-6)
        torch.testing.assert_close(s.tokens, x[s.token_index], rtol=0, atol=1e-6)


def test_collect_fx_leaves_the_program_alone(tiny):
    before_graph, before_params = str(tiny.ep.graph), dict(tiny.ep.state_dict)
    collect_fx(tiny.ep, tiny.sites, tiny.windows[:1], StatsSpec(), progress=False)
    assert str(tiny.ep.graph) == before_graph
    assert all(tiny.ep.state_dict[k] is v for k, v in before_params.items())


def test_collect_fx_rejects_bad_sites_and_windows(tiny):
    node = next(n for n in tiny.ep.graph.nodes if n.target is torch.ops.aten.embedding.default)
    with pytest.raises(ValueError, match="not aten.linear"):
        collect_fx(tiny.ep, {"embed": node}, tiny.windows, StatsSpec(), progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        collect_fx(tiny.ep, tiny.sites, tiny.windows, StatsSpec(quantiles=(0.9,), max_tokens=64), progress=False)
    with pytest.raises(ValueError, match=r"\[n, L\]"):
        collect_fx(tiny.ep, tiny.sites, tiny.windows.float(), StatsSpec(), progress=False)


def test_collect_onnx_equals_collect_fx(tiny, fx_stats, onnx_file):
    path, sites = onnx_file
    assert set(sites) == set(tiny.sites)
    before = path.read_bytes()
    got = collect_onnx(path, sites, tiny.windows, SPEC, batch_size=4, progress=False, threads=1)
    assert path.read_bytes() == before
    for fqn, s in got.items():
        ref = fx_stats[fqn]
        assert s.count == ref.count
        torch.testing.assert_close(s.mean, ref.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(s.var, ref.var, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.absmax, ref.absmax, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.gram, ref.gram, rtol=1e-5, atol=1e-4)
        for q in QS:
            torch.testing.assert_close(s.quantile(q), ref.quantile(q), rtol=1e-5, atol=1e-5)
        assert torch.equal(s.token_index, ref.token_index)  # same seed, same row counts


def test_collect_onnx_rejects_unknown_values(tiny, onnx_file):
    with pytest.raises(ValueError, match="no value named"):
        collect_onnx(onnx_file[0], {"x": "no_such_value"}, tiny.windows, StatsSpec(), progress=False, threads=1)


def test_a_forward_gives_back_each_mapped_weight_once_read(tiny, monkeypatch):
    """GraphRunner releases a parameter's pages after its last reader: with weights in mapped
    files (qpasses.offload) a forward holds about one layer's weights at a time."""
    import sys

    module = sys.modules["qpasses.calibration.collect_fx"]
    released = []
    monkeypatch.setattr(module, "release", lambda t: released.append(t))
    spec = StatsSpec(moments=False, absmax=False, max_tokens=96)
    collect_fx(tiny.ep, tiny.sites, tiny.windows, spec, progress=False)
    weights = {id(v) for k, v in tiny.ep.state_dict.items() if k.endswith("_proj.weight")}
    assert weights and weights <= {id(t) for t in released}
