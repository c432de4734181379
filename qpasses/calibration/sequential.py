"""Layer-sequential calibration: group i is measured on a model whose groups < i are processed.

The graph is cut, in topological order, into one segment per group: segment i runs from just
after the last node of group i-1 (the start of the graph for i = 0) up to and including the
last node of group i, so nodes between two groups (norms, residual adds) belong to the next
group's segment. Per group, every batch runs segment i from the values live at the boundary
before it up to its last node, exclusive (collecting group i's statistics: the last node's input
is there), then `process(i, stats)` edits parameters, then every batch runs the last node with
the edited parameters to produce the boundary values for group i+1. Only when `process` edited a
parameter that an earlier node of the segment reads does the whole segment run again. Total
work: about one execution of every node up to the last group, whatever the number of groups
(nodes after the last group never run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from tqdm import tqdm

from qpasses.calibration.collect_fx import Env, GraphRunner, batches, check_sites, check_windows, stats_hook
from qpasses.calibration.stats import SiteStats, StatsSpec
from qpasses.memory import release_free_memory
from qpasses.profiling import stage


def segments(runner: GraphRunner, groups: Sequence[Mapping[str, torch.fx.Node]]) -> list[tuple[int, int]]:
    """(start, end) node positions of each group's segment; groups must follow each other in
    topological order (every node of group i after every node of group i-1)."""
    out, prev_end = [], -1
    for i, group in enumerate(groups):
        if not group:
            raise ValueError(f"group {i} holds no site")
        first = min(runner.pos[n] for n in group.values())
        last = max(runner.pos[n] for n in group.values())
        if first <= prev_end:
            raise ValueError(f"group {i} starts at node {runner.order[first].name}, before the end of group {i - 1} "
                             f"({runner.order[prev_end].name}); groups must not interleave in topological order")
        out.append((prev_end + 1, last))
        prev_end = last
    return out


def live_after(runner: GraphRunner, end: int) -> list[torch.fx.Node]:
    """Non-placeholder values produced at or before `end` and used after it: the boundary."""
    return [n for n in runner.order[: end + 1] if n.op != "placeholder" and runner.last_use[n] > end]


def changed(program: ExportedProgram, held: Mapping[str, object]) -> set[str]:
    """Names of parameters, buffers and constants that are not the objects in `held` any more."""
    now = {**program.state_dict, **program.constants}
    return {name for name, value in now.items() if held.get(name) is not value}


def read_by(runner: GraphRunner, nodes) -> set[str]:
    """Names of the program inputs (parameters, buffers, constants) that `nodes` read directly."""
    targets = {s.arg.name: s.target for s in runner.program.graph_signature.input_specs if s.target is not None}
    return {targets[a.name] for n in nodes for a in n.all_input_nodes if a.op == "placeholder" and a.name in targets}


def first_reader(runner: GraphRunner, names: set[str], start: int) -> int:
    """The earliest position >= start of a node reading one of the named program inputs
    (len(order) when none does)."""
    by_name = {n.name: n for n in runner.placeholders}
    nodes = [by_name[s.arg.name] for s in runner.program.graph_signature.input_specs if s.target in names]
    return min((runner.pos[u] for n in nodes for u in n.users if runner.pos[u] >= start), default=len(runner.order))


def layer_sequential(program: ExportedProgram, groups: Sequence[Mapping[str, torch.fx.Node]], windows: torch.Tensor,
                     spec: StatsSpec, process: Callable[[int, dict[str, SiteStats]], None],
                     batch_size: int = 4, progress: bool = True, resume_at: int = 0, own_edits: bool = False) -> None:
    """Call `process(i, stats_i)` for each group in order, where stats_i are the statistics of
    group i's sites (site name -> SiteStats over windows[n, L], all-ones mask) measured after
    process(0..i-1) ran. With `resume_at` > 0, groups before it count as processed already (a
    resumed run applied their results): their segments run once, forward only, up to group
    `resume_at`.

    `process` may replace parameters (`program.state_dict[name] = ...`) but not the graph.
    Parameters are re-read for every segment run, so an edit takes effect in every later
    segment; an edit to a parameter only used by segments < i (already run) has no effect on
    the boundary values, which are not recomputed.

    Time: per window, one execution of each node up to the last group (a second one of a
    segment whose earlier nodes read a parameter that `process` replaced), plus process.
    Peak memory: all n windows' values live at two points, the boundary before the segment and
    the one before its last node (for a Llama decoder layer: the residual stream and the
    down_proj output, 2 x [L, H], the rotary tables [L, head_dim] and the attention mask [L, L]
    per window, about 8·L·H + L² bytes in fp32, twice), plus one batch's activations inside one
    segment, plus one group's statistics.

    own_edits=True is a promise that process(i) edits only parameters that group i's own nodes
    read, or that only nodes after its segment read (a solve's weights; a branch behind the last
    linear). Then which of the two points the propagation needs is known before the solve, and
    only that one is kept through it: the boundary when a group node before the last one reads
    what process edits (q/k/v, gate/up: the segment runs again), else the values before the last
    node (o_proj, down_proj: the boundary, which for down_proj holds the gate and up outputs,
    2 x [L, intermediate] a window, is dropped as the measuring run consumes it). A process that
    breaks the promise is an error.
    """
    runner = GraphRunner(program)
    by_node = [check_sites(program, g) for g in groups]
    windows = check_windows(windows, spec)
    spans = segments(runner, groups)
    chunks = batches(windows, batch_size)
    if len(spans) <= resume_at:
        return
    boundary: list[Env] = [{} for _ in chunks]
    if resume_at:
        done = spans[resume_at - 1][1]
        keep = live_after(runner, done)
        with torch.no_grad(), stage("forward"):
            for b, ids in enumerate(chunks):
                env = runner.inputs(ids)
                runner.run_range(0, done, env)
                boundary[b] = {n: env[n] for n in keep}
    # One step per group, so the ETA counts the solves (most of the time at scale), not only forwards.
    bar = tqdm(total=len(spans), initial=resume_at, desc="layer-sequential", unit="group", disable=not progress)
    for i, (start, end) in enumerate(spans[resume_at:], resume_at):
        site = next(iter(groups[i]))
        bar.set_postfix_str(f"{site}: measuring")
        stats = {name: SiteStats(spec) for name in groups[i]}
        hook = stats_hook(stats, by_node[i])
        last = runner.order[end]
        # without the promise both points are kept, and the solve's edits decide which one is used
        rerun_planned = own_edits and first_reader(runner, read_by(runner, groups[i].values()), start) < end
        keep_boundary = rerun_planned or not own_edits
        before_last = []  # per batch: the values live just before the segment's last node
        with torch.no_grad(), stage("forward"):
            for b, ids in enumerate(chunks):
                env = {**runner.inputs(ids), **boundary[b]}
                if not keep_boundary:
                    boundary[b] = {}  # env holds them now, and lets each go after its last use
                runner.run_range(start, end - 1, env, hook)
                hook(last, env)
                if not rerun_planned:
                    before_last.append({n: v for n, v in env.items() if n.op != "placeholder"})
                del env
        bar.set_postfix_str(f"{site}: solving")
        held = {**program.state_dict, **program.constants}
        process(i, stats)  # outside no_grad: it may train (learned scales)
        if i + 1 < len(spans):
            bar.set_postfix_str(f"{site}: propagating")
            keep = live_after(runner, end)
            edited = changed(program, held)
            rerun = rerun_planned or first_reader(runner, edited, start) < end
            if rerun and not keep_boundary:
                raise RuntimeError(f"group {i}: process edited {sorted(edited)}, read before the segment's last node "
                                   "but not by the group's own nodes, after promising own_edits")
            with torch.no_grad(), stage("forward"):
                for b, ids in enumerate(chunks):
                    env = {**runner.inputs(ids), **(boundary[b] if rerun else before_last[b])}
                    runner.run_range(start if rerun else end, end, env)
                    boundary[b] = {n: env[n] for n in keep}
        del held, before_last
        release_free_memory()
        bar.update()
    bar.close()
