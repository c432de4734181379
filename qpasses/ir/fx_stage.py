"""Stage A: the torch.export programs (logits and KV-cache decoder) seen as linear sites.

A site is an `aten.linear` whose weight is a lifted parameter, found by pattern
(`Programs.linear_nodes`); the same parameter in both programs is one site. Editing a site
edits both programs, so the decoder graph always matches the logits graph.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from qpasses.formats.spec import ActFormat
from qpasses.ir.sites import LOWRANK_PREFIX, ROTATION_PREFIX, LinearSite, TensorSite

_LINEAR = torch.ops.aten.linear.default
_MATMUL, _ADD = torch.ops.aten.matmul.default, torch.ops.aten.add.Tensor


def weight_fqn(programs, prog_name: str, node: torch.fx.Node) -> str:
    """The Hugging Face parameter name behind a linear node's weight input."""
    ep = getattr(programs, prog_name)
    key = ep.graph_signature.inputs_to_parameters[node.args[1].name]
    return programs.fqn(key)


class FxSite(LinearSite):
    def __init__(self, stage: FxStage, name: str, weight_name: str, uses: list[tuple[str, torch.fx.Node]]):
        self.stage, self.name, self.weight_name, self.uses = stage, name, weight_name, uses

    def weight(self) -> np.ndarray:
        return self.stage.programs.parameter(self.weight_name).detach().float().numpy().copy()

    def set_weight(self, w: np.ndarray) -> None:
        self.stage.set_parameter(self.weight_name, w)

    def bias(self) -> np.ndarray | None:
        prog, node = self.uses[0]
        if len(node.args) < 3 or node.args[2] is None:
            return None
        ep = getattr(self.stage.programs, prog)
        key = ep.graph_signature.inputs_to_parameters[node.args[2].name]
        return self.stage.programs.parameter(self.stage.programs.fqn(key)).detach().float().numpy()

    def quantize_input(self, fmt: ActFormat) -> None:
        from qpasses.ir.fx_ops import quant_act  # noqa: F401  (registers torch.ops.qpasses.quant_act)

        for prog, node in self.uses:
            graph = node.graph
            x = node.args[0]
            with graph.inserting_before(node):
                q = graph.call_function(torch.ops.qpasses.quant_act.default, (x, fmt.kind, fmt.block_size))
            q.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
            if "val" in x.meta:
                q.meta["val"] = x.meta["val"]
            node.replace_input_with(x, q)
            self.stage.touched.add(prog)
        self.stage.edits.append(f"quantize_input {self.name} {fmt}")


class FxTable(TensorSite):
    """An embedding table: aten.embedding(W[V, H], ids) with W a parameter."""

    def __init__(self, stage: FxStage, name: str, weight_name: str):
        self.stage, self.name, self.weight_name = stage, name, weight_name

    def weight(self) -> np.ndarray:
        return self.stage.programs.parameter(self.weight_name).detach().float().numpy().copy()

    def set_weight(self, w: np.ndarray) -> None:
        self.stage.set_parameter(self.weight_name, w)


class FxStage:
    """Stage A ("fx"): the graph stage over a `qpasses.export.capture.Programs`."""

    stage = "fx"

    def __init__(self, programs):
        self.programs = programs
        self.edits: list[str] = []  # every edit, in order: the graph fingerprint
        self.touched: set[str] = set()

    def sites(self) -> list[FxSite]:
        by_weight: dict[str, FxSite] = {}
        for name, uses in self.programs.linear_nodes().items():
            for prog, node in uses:
                wname = weight_fqn(self.programs, prog, node)
                site = by_weight.get(wname)
                if site is None:
                    by_weight[wname] = FxSite(self, name, wname, [(prog, node)])
                else:
                    site.uses.append((prog, node))
        return list(by_weight.values())

    def sites_by_node(self) -> dict[torch.fx.Node, FxSite]:
        """Every linear node of every program -> its site."""
        return {node: site for site in self.sites() for _, node in site.uses}

    def set_parameter(self, weight_name: str, w: np.ndarray) -> None:
        old = self.programs.parameter(weight_name)
        self.programs.set_parameter(weight_name, torch.from_numpy(np.ascontiguousarray(w)).to(old.dtype))
        self.edits.append(f"set_weight {weight_name} {hashlib.sha256(w.tobytes()).hexdigest()[:12]}")

    def rotate_input(self, sites: list[FxSite], rotation, key: str) -> None:
        """Insert x ↦ x·R (torch.ops.qpasses.rotate) in front of `sites`, which must read the same
        input in every program; their weights are the caller's to fold (W ← W R)."""
        from qpasses.ir.fx_edit import add_input
        from qpasses.ir.fx_ops import rotate  # noqa: F401  (registers torch.ops.qpasses.rotate)

        for prog, ep in self.programs.programs().items():
            nodes = [node for site in sites for p, node in site.uses if p == prog]
            x = nodes[0].args[0]
            if any(n.args[0] is not x for n in nodes):
                raise ValueError(f"{', '.join(s.name for s in sites)} do not share one input in the {prog} program")
            parts = {"signs": rotation.signs, "left_t": None if rotation.left is None else rotation.left.T,
                     "right": rotation.right}
            consts = {part: add_input(ep, f"{ROTATION_PREFIX}{key}.{part}", torch.tensor(value, dtype=torch.float32))
                      for part, value in parts.items() if value is not None}
            first = min(nodes, key=list(ep.graph.nodes).index)
            with ep.graph.inserting_before(first):
                r = ep.graph.call_function(torch.ops.qpasses.rotate.default, (
                    x, consts.get("signs"), consts.get("left_t"), consts["right"], rotation.size // rotation.block,
                    rotation.block))
            r.meta["val"] = x.meta.get("val")
            for n in nodes:
                n.replace_input_with(x, r)
            self.touched.add(prog)
        self.edits.append(f"rotate_input {key} {rotation.describe()}")

    def add_lowrank(self, site: FxSite, rank: int) -> None:
        """y ← y + (x L) R behind every use of `site`, x the linear's float input (in front of an
        activation quantizer, so the branch reads what the op's `L`/`R` inputs read), L [K, rank] and
        R [rank, N] zero constants `lowrank.<weight>.L/R` that `set_lowrank` fills. Identity: a zero
        branch adds nothing."""
        from qpasses.ir.fx_edit import add_input
        from qpasses.ir.fx_ops import tap_node

        n, k = site.shape
        for prog, node in site.uses:
            ep, graph = getattr(self.programs, prog), node.graph
            x = tap_node(node, "float").args[0]
            lr = [add_input(ep, f"{LOWRANK_PREFIX}{site.weight_name}.{part}", torch.zeros(shape))
                  for part, shape in (("L", (k, rank)), ("R", (rank, n)))]
            with graph.inserting_after(node):
                t = graph.call_function(_MATMUL, (x, lr[0]))
            with graph.inserting_after(t):
                b = graph.call_function(_MATMUL, (t, lr[1]))
            with graph.inserting_after(b):
                y = graph.call_function(_ADD, (node, b))
            node.replace_all_uses_with(y, delete_user_cb=lambda user, y=y: user is not y)
            fake = x.meta["val"].fake_mode.from_tensor
            t.meta["val"] = _MATMUL(x.meta["val"], fake(lr[0].meta["val"]))
            b.meta["val"] = _MATMUL(t.meta["val"], fake(lr[1].meta["val"]))
            y.meta["val"] = node.meta["val"]
            for new in (t, b, y):
                new.meta.update({key: v for key, v in node.meta.items() if key in ("nn_module_stack", "stack_trace")})
            self.touched.add(prog)
        self.edits.append(f"add_lowrank {site.weight_name} {rank}")

    def set_lowrank(self, site: FxSite, left: np.ndarray, right: np.ndarray) -> None:
        """Fill the branch `add_lowrank` made: L [K, r], R [r, N] float32 (r = the branch's rank)."""
        for part, value in (("L", left), ("R", right)):
            key = f"{LOWRANK_PREFIX}{site.weight_name}.{part}"
            for ep in self.programs.programs().values():
                if tuple(ep.constants[key].shape) != value.shape:
                    raise ValueError(f"{key}: the branch holds {tuple(ep.constants[key].shape)}, got {value.shape}")
                ep.constants[key] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
            self.edits.append(f"set_lowrank {key} {hashlib.sha256(value.tobytes()).hexdigest()[:12]}")

    def lowrank(self, site: FxSite) -> tuple[np.ndarray, np.ndarray] | None:
        """(L, R) of the site's low-rank branch, or None."""
        consts = self.programs.logits.constants
        key = f"{LOWRANK_PREFIX}{site.weight_name}."
        if key + "L" not in consts:
            return None
        return consts[key + "L"].numpy(), consts[key + "R"].numpy()

    def untie(self, alias: str) -> None:
        """Give the linears that read tied parameter `alias` a copy of their own; the embedding
        keeps the canonical tensor. Identity: nothing changes but storage, W_lm = E."""
        from qpasses.ir.fx_edit import add_input, parameter_of, placeholder_for
        from qpasses.offload import to_file

        canonical = self.programs.tied.pop(alias)
        value = self.programs.parameter(canonical)
        for prog, ep in self.programs.programs().items():
            own = {k: placeholder_for(ep, k) or add_input(ep, k, value, kind="parameter") for k in (canonical, alias)}
            # which argument holds the tied tensor, and whose copy it must read afterwards
            readers = {torch.ops.aten.embedding.default: (0, canonical), _LINEAR: (1, alias)}
            for node in ep.graph.nodes:
                arg, target = readers.get(node.target, (None, None))
                if arg is not None and self.programs.fqn(parameter_of(ep, node.args[arg]) or "") in (canonical, alias):
                    node.update_arg(arg, own[target])
            ep.state_dict[alias] = torch.nn.Parameter(to_file(value), requires_grad=False)
            self.touched.add(prog)
        self.edits.append(f"untie {alias} from {canonical}")

    def embedding_sites(self) -> list[FxTable]:
        tables: dict[str, FxTable] = {}
        for prog in ("logits", "decoder"):
            ep = getattr(self.programs, prog, None)
            if ep is None:
                continue
            params = ep.graph_signature.inputs_to_parameters
            for node in ep.graph.nodes:
                if node.target is torch.ops.aten.embedding.default and node.args[0].name in params:
                    wname = self.programs.fqn(params[node.args[0].name])
                    tables.setdefault(wname, FxTable(self, wname.removesuffix(".weight"), wname))
        return list(tables.values())

    def verify(self) -> None:
        for prog in sorted(self.touched):
            ep = getattr(self.programs, prog)
            ep.graph.lint()
            ep.graph_module.recompile()
        self.touched.clear()

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.edits).encode()).hexdigest()[:16]

    def dump(self) -> str:
        lines = []
        for prog in ("logits", "decoder"):
            ep = getattr(self.programs, prog, None)
            if ep is not None:
                lines.append(f"== {prog}")
                lines.append(str(ep.graph))
        lines.append("== sites")
        lines += [s.describe() for s in self.sites()]
        return "\n".join(lines) + "\n"
