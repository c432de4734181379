import pytest
import torch

from qpasses.calibration import StatsSpec, collect_fx, layer_sequential
from qpasses.calibration.collect_fx import GraphRunner
from qpasses.calibration.sequential import segments

SPEC = StatsSpec(quantiles=(0.99,), max_tokens=96, gram=True)
SCALE = (1.5, 0.7, 2.0)  # per group


def scale(ep, group, factor):
    """Replace the weights of a group (sites are keyed by weight fqn) by factor * weight."""
    for fqn in group:
        ep.state_dict[fqn] = ep.state_dict[fqn] * factor


@pytest.fixture
def restore(tiny):
    saved = dict(tiny.ep.state_dict)
    yield
    tiny.ep.state_dict.clear()
    tiny.ep.state_dict.update(saved)


def count_node_runs(monkeypatch):
    counter = {"n": 0}
    run_node = torch.fx.Interpreter.run_node

    def counting(self, node):
        counter["n"] += 1
        return run_node(self, node)

    monkeypatch.setattr(torch.fx.Interpreter, "run_node", counting)
    return counter


def assert_same(a, b):
    assert a.count == b.count
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.var, b.var, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.absmax, b.absmax, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.gram, b.gram, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.quantile(0.99), b.quantile(0.99), rtol=0, atol=1e-6)


@pytest.mark.parametrize("own_edits", [False, True])
def test_each_group_sees_the_already_processed_model(tiny, restore, monkeypatch, own_edits):
    ep, groups = tiny.ep, tiny.layers
    originals = dict(ep.state_dict)
    unprocessed = collect_fx(ep, tiny.sites, tiny.windows, SPEC, progress=False)
    seen = {}

    def process(i, stats):
        assert set(stats) == set(groups[i]) and torch.is_grad_enabled()  # a pass may train here
        seen[i] = stats
        scale(ep, groups[i], SCALE[i])

    runs = count_node_runs(monkeypatch)
    layer_sequential(ep, groups, tiny.windows, SPEC, process, batch_size=4, progress=False, own_edits=own_edits)
    assert sorted(seen) == [0, 1, 2]
    monkeypatch.undo()

    for i, group in enumerate(groups):
        ep.state_dict.update(originals)
        for j in range(i):
            scale(ep, groups[j], SCALE[j])
        fresh = collect_fx(ep, group, tiny.windows, SPEC, progress=False)
        for fqn in group:
            assert_same(seen[i][fqn], fresh[fqn])
    later = [f for f in groups[1] if "q_proj" in f][0]
    assert not torch.allclose(seen[1][later].mean, unprocessed[later].mean)  # processing did matter

    runner = GraphRunner(ep)
    spans = segments(runner, groups)
    nodes = [sum(runner.order[p].op != "placeholder" for p in range(a, b + 1)) for a, b in spans]
    n_batches = 2
    # collecting runs each segment up to its last node; processing edits weights read inside the
    # segment (a whole layer's linears), so every segment but the last runs again in full
    assert runs["n"] == (sum(n - 1 for n in nodes) + sum(nodes[:-1])) * n_batches


@pytest.mark.parametrize("own_edits", [False, True])
def test_an_edit_of_the_last_node_only_costs_that_node(tiny, restore, monkeypatch, own_edits):
    # One group per linear: each segment ends at its linear, and processing edits only that
    # linear's weight, so after collecting, the segment's last node alone runs again.
    ep = tiny.ep
    order = {n: i for i, n in enumerate(ep.graph.nodes)}
    groups = [{fqn: node} for fqn, node in sorted(tiny.sites.items(), key=lambda kv: order[kv[1]])]
    seen = {}

    def process(i, stats):
        seen[i] = stats
        scale(ep, groups[i], 1.25 + 0.1 * i)

    originals = dict(ep.state_dict)
    runs = count_node_runs(monkeypatch)
    layer_sequential(ep, groups, tiny.windows, SPEC, process, batch_size=4, progress=False, own_edits=own_edits)
    monkeypatch.undo()
    runner = GraphRunner(ep)
    nodes = [sum(runner.order[p].op != "placeholder" for p in range(a, b + 1)) for a, b in segments(runner, groups)]
    assert runs["n"] == (sum(n - 1 for n in nodes) + len(groups) - 1) * 2
    ep.state_dict.update(originals)
    for i, group in enumerate(groups):  # the same statistics as a fresh collection on the processed model
        assert_same(seen[i][next(iter(group))],
                    collect_fx(ep, group, tiny.windows, SPEC, progress=False)[next(iter(group))])
        scale(ep, group, 1.25 + 0.1 * i)


def test_own_edits_is_a_promise_that_is_checked(tiny, restore):
    # One group per linear: the first segment runs the input norm before q_proj, so a process
    # that edits the norm's weight edits what the group's own node does not read.
    ep = tiny.ep
    order = {n: i for i, n in enumerate(ep.graph.nodes)}
    groups = [{fqn: node} for fqn, node in sorted(tiny.sites.items(), key=lambda kv: order[kv[1]])]
    norm = next(k for k in ep.state_dict if "layers.0.input_layernorm" in k)

    def process(i, stats):
        ep.state_dict[norm] = ep.state_dict[norm] * 1.5

    with pytest.raises(RuntimeError, match="input_layernorm.*own_edits"):
        layer_sequential(ep, groups, tiny.windows, SPEC, process, batch_size=4, progress=False, own_edits=True)


def test_groups_must_follow_each_other(tiny):
    g0, g1 = tiny.layers[0], tiny.layers[1]
    mixed = [{**dict(list(g0.items())[:1]), **dict(list(g1.items())[:1])}, dict(list(g0.items())[1:])]
    with pytest.raises(ValueError, match="interleave"):
        layer_sequential(tiny.ep, mixed, tiny.windows, SPEC, lambda i, s: None, progress=False)
    with pytest.raises(ValueError, match="no site"):
        layer_sequential(tiny.ep, [g0, {}], tiny.windows, SPEC, lambda i, s: None, progress=False)
