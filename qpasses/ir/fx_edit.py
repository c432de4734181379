"""Structural edits of a torch.export program that keep its signature consistent.

An ExportedProgram lists its lifted inputs (parameters, buffers, constant tensors) twice: as
placeholder nodes, in order, and as `graph_signature.input_specs`, in the same order, with the
tensors in `state_dict` (parameters, buffers) or `constants`. `add_input` adds one lifted input
in all three places, in front of the first user input as torch.export itself does.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

KINDS = {"parameter": InputKind.PARAMETER, "constant": InputKind.CONSTANT_TENSOR}


def placeholder_for(ep: ExportedProgram, target: str) -> torch.fx.Node | None:
    """The placeholder of the lifted input named `target` (a state-dict or constant key), if any."""
    names = {s.target: s.arg.name for s in ep.graph_signature.input_specs if s.target is not None}
    if target not in names:
        return None
    return next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == names[target])


def add_input(ep: ExportedProgram, target: str, value: torch.Tensor, kind: str = "constant") -> torch.fx.Node:
    """A new lifted input `target` holding `value`; returns its placeholder node."""
    if placeholder_for(ep, target) is not None:
        raise ValueError(f"the program already has an input named {target!r}")
    specs = ep.graph_signature.input_specs
    at = next(i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT)
    first_user = [n for n in ep.graph.nodes if n.op == "placeholder"][at]
    with ep.graph.inserting_before(first_user):
        node = ep.graph.placeholder(("p_" if kind == "parameter" else "c_") + target.replace(".", "_"))
    node.target = node.name
    node.meta["val"] = value
    specs.insert(at, InputSpec(kind=KINDS[kind], arg=TensorArgument(name=node.name), target=target,
                               persistent=None))
    if kind == "parameter":
        ep.state_dict[target] = torch.nn.Parameter(value.detach().clone(), requires_grad=False)
    else:
        ep.constants[target] = value.detach().clone()
    return node


def non_meta_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """Users that compute something (tensor-metadata assertions left out)."""
    return [u for u in node.users if u.target is not torch.ops.aten._assert_tensor_metadata.default]


def parameter_of(ep: ExportedProgram, node) -> str | None:
    """The state-dict key behind a placeholder node, or None when `node` is no parameter."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        return None
    return ep.graph_signature.inputs_to_parameters.get(node.name)
