from dataclasses import dataclass

import pytest

from qpasses.errors import NoMatchError, PostconditionError, PreconditionError, RecipeError
from qpasses.passes.base import Context, Pass
from qpasses.passes.manager import PassManager


class FakeGraph:
    def __init__(self, stage):
        self.stage, self.graph_count, self.calls = stage, 1, []

    def sites(self):
        return []

    def verify(self):
        self.calls.append("verify")

    def dump(self):
        return f"{self.stage} graph\n"


@dataclass(frozen=True)
class NoSettings:
    pass


def make_pass(name, stages, count=1, ensures_ok=True, expects=True):
    def run(self, graph, ctx):
        graph.calls.append(name)
        return {f"{name}.rule": count}

    def ensures(self, graph, ctx):
        if not ensures_ok:
            raise PostconditionError("broken promise")

    cls = type(name, (Pass,), {"name": name, "stages": stages, "Settings": NoSettings, "run": run,
                               "ensures": ensures, "expects_rewrites": expects})
    return cls()


def manager(passes, **kw):
    return PassManager(passes, to_onnx=lambda g: FakeGraph("onnx"), log=lambda s: None, **kw)


def test_stage_change_happens_once_before_first_onnx_only_pass():
    seen = []
    m = PassManager([make_pass("a", ("fx",)), make_pass("b", ("fx", "onnx")), make_pass("c", ("onnx",))],
                    to_onnx=lambda g: FakeGraph("onnx"), on_stage_change=lambda g: seen.append(g.stage),
                    log=lambda s: None)
    graph, results = m.run(FakeGraph("fx"), Context())
    assert graph.stage == "onnx" and seen == ["fx"]
    assert [r.name for r in results] == ["a", "b", "export_onnx", "c"]
    assert all(r.seconds >= 0 for r in results)


def test_export_happens_at_the_end_when_no_pass_needs_onnx():
    graph, results = manager([]).run(FakeGraph("fx"), Context())
    assert graph.stage == "onnx" and [r.name for r in results] == ["export_onnx"]


def test_zero_rewrites_is_an_error_unless_declared_optional():
    with pytest.raises(NoMatchError, match="rewrote nothing"):
        manager([make_pass("a", ("fx",), count=0)]).run(FakeGraph("fx"), Context())
    manager([make_pass("a", ("fx",), count=0, expects=False)]).run(FakeGraph("fx"), Context())


def test_a_pass_that_says_why_it_did_not_apply_is_let_go_on_with_a_warning():
    ctx, said = Context(), []
    ctx.notes.not_applied["a"] = "no producer can absorb 1/s"
    m = PassManager([make_pass("a", ("fx",), count=0)], to_onnx=lambda g: FakeGraph("onnx"), log=said.append)
    _, results = m.run(FakeGraph("fx"), ctx)
    assert results[0].to_json()["not_applied"] == "no producer can absorb 1/s"
    assert "warning: a did not apply: no producer can absorb 1/s" in said


def test_failures_name_the_passes_already_run():
    with pytest.raises(PostconditionError, match=r"broken promise \(in pass 'b'; passes already run: a\)"):
        manager([make_pass("a", ("fx",)), make_pass("b", ("fx",), ensures_ok=False)]).run(FakeGraph("fx"), Context())


def test_fx_only_pass_refused_on_onnx_input():
    with pytest.raises(PreconditionError, match="does not run on onnx graphs"):
        manager([make_pass("a", ("fx",))]).run(FakeGraph("onnx"), Context())


def test_dump_before_and_after_each_pass(tmp_path):
    manager([make_pass("a", ("fx",))], dump_dir=tmp_path).run(FakeGraph("fx"), Context())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-a-after.fx.txt", "00-a-before.fx.txt"]


def test_a_pass_ignore_list_adds_to_the_recipe_one_for_that_pass_only():
    seen = []

    def run(self, graph, ctx):
        seen.append((self.name, ctx.ignore))
        return {"rule": 1}

    a, b = (type(n, (Pass,), {"name": n, "stages": ("fx",), "Settings": NoSettings, "run": run}) for n in "ab")
    manager([a(ignore=["lm_head"]), b()]).run(FakeGraph("fx"), ctx := Context(ignore=("*.v_proj",)))
    assert seen == [("a", ("*.v_proj", "lm_head")), ("b", ("*.v_proj",))] and ctx.ignore == ("*.v_proj",)
    with pytest.raises(RecipeError, match="ignore must be a list"):
        a(ignore=3)
