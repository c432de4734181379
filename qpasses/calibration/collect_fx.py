"""Stage A collection: run an ExportedProgram node by node and feed linear inputs to SiteStats.

The program is never modified: `GraphRunner` interprets `program.graph_module` (whose nodes are
the nodes of `program.graph`) with its lifted inputs read from `program.state_dict` and
`program.constants` at the start of every batch, so parameters replaced between batches or
segments are picked up. Statistics are over the linear's input `args[0]`, flattened to
[tokens, K], on windows[n, L] with an all-ones attention mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from tqdm import tqdm

from qpasses.calibration.stats import SiteStats, StatsSpec
from qpasses.ir.fx_ops import TAPS
from qpasses.offload import release
from qpasses.profiling import stage

Env = dict[torch.fx.Node, object]


class GraphRunner(torch.fx.Interpreter):
    """Executes ranges of `program.graph` in topological order over an explicit environment.

    `pos[node]` is the topological index and `last_use[node]` the index of its last user (its
    own index when unused): a value is dropped from the environment once execution passes it.
    """

    def __init__(self, program: ExportedProgram):
        super().__init__(program.graph_module, garbage_collect_values=False)
        self.program = program
        self.order = list(program.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.last_use = {n: max((self.pos[u] for u in n.users), default=i) for i, n in enumerate(self.order)}
        self.placeholders = [n for n in self.order if n.op == "placeholder"]
        user = [s for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        if len(user) not in (1, 2):
            raise ValueError(f"expected forward(input_ids[, attention_mask]), the program takes {len(user)} inputs")

    def inputs(self, ids: torch.Tensor) -> Env:
        """Placeholder values for one batch ids[b, s]: current parameters, buffers, constants,
        the ids and an all-ones mask."""
        by_name = {n.name: n for n in self.placeholders}
        sd, consts = self.program.state_dict, self.program.constants
        env: Env = {}
        users = [ids, torch.ones_like(ids)]
        for spec in self.program.graph_signature.input_specs:
            node = by_name[spec.arg.name]
            if spec.kind == InputKind.USER_INPUT:
                env[node] = users.pop(0)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in sd:
                env[node] = sd[spec.target]
            elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
                env[node] = consts[spec.target]
            else:
                raise ValueError(f"cannot feed program input {spec.arg.name} of kind {spec.kind.name}")
        return env

    def run_range(self, start: int, end: int, env: Env,
                  on_node: Callable[[torch.fx.Node, Env], None] | None = None) -> None:
        """Execute non-placeholder nodes at positions start..end (inclusive) into env.

        `on_node(node, env)` is called before each node runs (its inputs are in env). Values whose
        last use lies in the range are deleted from env once consumed; values still needed after
        `end` stay. A parameter kept in a mapped file (qpasses.offload) gives its pages back once
        read for the last time: a forward holds about one layer's weights at a time."""
        self.env = env
        for i in range(start, end + 1):
            node = self.order[i]
            if node.op == "placeholder":
                continue
            if on_node is not None:
                on_node(node, env)
            env[node] = self.run_node(node)
            for arg in (*node.all_input_nodes, node):
                if self.last_use[arg] <= i:
                    value = env.pop(arg, None)
                    if arg.op == "placeholder":
                        release(value)  # a weight in a mapped file (qpasses.offload): its pages go back
        self.env = {}


def check_sites(program: ExportedProgram, sites: Mapping[str, torch.fx.Node]) -> dict[torch.fx.Node, list[str]]:
    """Site nodes must be nodes of program.graph whose first argument is measured: an
    `aten.linear`, or a qpasses quant_act / rotate in front of one; returns node -> site names."""
    allowed = {torch.ops.aten.linear.default, *TAPS.values()}
    by_node: dict[torch.fx.Node, list[str]] = {}
    for name, node in sites.items():
        if node.graph is not program.graph:
            raise ValueError(f"site {name}: node {node.name} is not a node of this program's graph")
        if node.target not in allowed or not isinstance(node.args[0], torch.fx.Node):
            raise ValueError(f"site {name}: node {node.name} is {node.target}, not aten.linear")
        by_node.setdefault(node, []).append(name)
    return by_node


def check_windows(windows: torch.Tensor, spec: StatsSpec) -> torch.Tensor:
    """windows[n, L] as int64, after checking the token count against the spec."""
    if windows.dim() != 2 or windows.is_floating_point() or windows.is_complex():
        raise ValueError(f"windows must be an integer tensor [n, L], got {windows.dtype} {tuple(windows.shape)}")
    spec.check_tokens(windows.numel())
    return windows.long()


def batches(windows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return list(windows.split(batch_size))


def stats_hook(stats: dict[str, SiteStats], by_node: Mapping[torch.fx.Node, Iterable[str]]):
    """An `on_node` callback feeding each site's input to its SiteStats."""

    def on_node(node: torch.fx.Node, env: Env) -> None:
        names = by_node.get(node, ())
        if names:
            with stage("statistics"):
                for name in names:
                    stats[name].update(env[node.args[0]])

    return on_node


def collect_fx(program: ExportedProgram, sites: Mapping[str, torch.fx.Node], windows: torch.Tensor,
               spec: StatsSpec, batch_size: int = 4, progress: bool = True) -> dict[str, SiteStats]:
    """Statistics of every site's input over windows[n, L] (all-ones mask), one forward per batch.

    Each forward stops after the last site (the tail, e.g. an unwatched lm_head, never runs).
    Peak memory: the statistics plus one batch's live activations.
    """
    by_node = check_sites(program, sites)
    windows = check_windows(windows, spec)
    stats = {name: SiteStats(spec) for name in sites}
    if not sites:
        return stats
    runner = GraphRunner(program)
    end = max(runner.pos[n] for n in by_node)
    hook = stats_hook(stats, by_node)
    with torch.no_grad():
        for ids in tqdm(batches(windows, batch_size), desc="calibrate", disable=not progress):
            runner.run_range(0, end, runner.inputs(ids), hook)
    return stats
