"""The pass manager: runs a recipe's passes in order over the graph stages.

Stage A (fx) comes first for torch models; the first pass that only runs on ONNX triggers the
stage change (export), which the caller supplies as `to_onnx`. After every pass the manager
runs the pass's `ensures` and the stage's own `verify`, refuses zero rewrites from a pass that
must fire, (with `dump_dir` or $QPASSES_DUMP) writes the graph before and after each pass, and
calls `after_pass(graph, result)` if given (e.g. the layer error probe). Failures name the
passes already run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from qpasses.errors import NoMatchError, PreconditionError, QPassError
from qpasses.passes.base import Context, Pass, PassResult
from qpasses.profiling import stage


class PassManager:
    def __init__(self, passes: list[Pass], to_onnx: Callable, on_stage_change: Callable | None = None,
                 dump_dir: Path | None = None, log: Callable[[str], None] = print,
                 after_pass: Callable[[object, PassResult], None] | None = None):
        self.passes = passes
        self.to_onnx = to_onnx
        self.on_stage_change = on_stage_change
        env = os.environ.get("QPASSES_DUMP")
        self.dump_dir = Path(dump_dir or env) if (dump_dir or env) else None
        self.log = log
        self.after_pass = after_pass

    def run(self, graph, ctx: Context) -> tuple[object, list[PassResult]]:
        """Run every pass; return the final (ONNX-stage) graph and one result per step."""
        results: list[PassResult] = []
        for i, p in enumerate(self.passes):
            if graph.stage not in p.stages:
                if graph.stage == "fx" and "onnx" in p.stages:
                    graph = self._change_stage(graph, results)
                else:
                    raise PreconditionError(f"pass {p.name!r} does not run on {graph.stage} graphs (it runs on "
                                            f"{', '.join(p.stages)}); with an ONNX input only ONNX-capable passes work")
            results.append(self._run_one(i, p, graph, ctx, results))
            if self.after_pass:
                self.after_pass(graph, results[-1])
        if graph.stage == "fx":
            graph = self._change_stage(graph, results)
        return graph, results

    def _change_stage(self, graph, results):
        if self.on_stage_change:
            self.on_stage_change(graph)
        t = time.perf_counter()
        with stage("export_onnx"):
            onnx_graph = self.to_onnx(graph)
        results.append(PassResult("export_onnx", {"export.graphs": onnx_graph.graph_count}, time.perf_counter() - t))
        self.log(f"  export_onnx: {onnx_graph.graph_count} graph(s) in {results[-1].seconds:.1f} s")
        return onnx_graph

    def _run_one(self, i: int, p: Pass, graph, ctx: Context, done: list[PassResult]) -> PassResult:
        self._dump(graph, f"{i:02d}-{p.name}-before")
        t = time.perf_counter()
        recipe_ignore = ctx.ignore
        ctx.ignore = recipe_ignore + p.ignore  # the pass's own ignore list, for this pass only
        ctx.step = i
        try:
            with stage(p.name):
                p.requires(graph, ctx)
                counts = p.run(graph, ctx)
                p.ensures(graph, ctx)
                graph.verify()
        except QPassError as e:
            ran = ", ".join(r.name for r in done) or "none"
            raise type(e)(f"{e} (in pass {p.name!r}; passes already run: {ran})") from None
        finally:
            ctx.ignore = recipe_ignore
        if p.changes_activations and ctx.calibration is not None:
            ctx.calibration.invalidate()  # statistics of the old activations can never be asked for again
        result = PassResult(p.name, counts, time.perf_counter() - t, ctx.notes.not_applied.get(p.name))
        if result.not_applied:
            self.log(f"warning: {p.name} did not apply: {result.not_applied}")
        elif p.expects_rewrites and result.total == 0:
            raise NoMatchError(
                f"pass {p.name!r} rewrote nothing: no linear site matched. The graph has {len(graph.sites())} linear "
                f"site(s); ignore patterns {list(ctx.ignore + p.ignore)}. Check the model and the recipe's ignore list."
            )
        self._dump(graph, f"{i:02d}-{p.name}-after")
        rules = ", ".join(f"{k}={v}" for k, v in counts.items())
        self.log(f"  {p.name}: {rules or 'no rewrites'} in {result.seconds:.1f} s")
        return result

    def _dump(self, graph, tag: str) -> None:
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{tag}.{graph.stage}.txt").write_text(graph.dump())
