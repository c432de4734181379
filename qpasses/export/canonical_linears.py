"""Linear sites found by structure: every product of an activation by a parameter matrix becomes
`aten.linear(x, W[N, K], bias)`, the one form stage A reads (`Programs.linear_nodes`).

Hugging Face writes a linear layer in more ways than `nn.Linear`; torch.export keeps each as it
was written:
- GPT-2's `Conv1D` holds W as [K, N] (in, out): `addmm(b, x.view(-1, K), W)`, viewed back;
- Falcon's `FalconLinear` holds W as [N, K] but computes `x @ W.T` (+ b).
`canonicalize_linears` rewrites both, once, right after capture, so every pass, calibration and
lowering sees one form. Each rewrite is exact (the same arithmetic, float rounding aside):

    matmul(x, Pᵀ) = mm(x, Pᵀ) = linear(x, P)            P a parameter [N, K]
    addmm(b, x, Pᵀ)           = linear(x, P, b)
    matmul(x, P) = mm(x, P)   = linear(x, Pᵀ)           P a parameter [K, N], stored transposed
    addmm(b, x, P)            = linear(x, Pᵀ, b)
    linear(x, W) + b          = linear(x, W, b)         b a parameter [N]
    view(linear(view(x, [-1, K]), W, b), [*x.shape[:-1], N]) = linear(x, W, b)

A parameter stored [K, N] is replaced by its transpose (contiguous, in a mapped file, one tensor
for both programs) under its own name, so a site's name is still its module's name and its
weight is [N, K] like any other; this happens only when every reader of the parameter, in every
program, is one of these products (and it is not tied), else that parameter is left as it is.
The rewritten nodes keep the replaced node's metadata (module stack, stack trace); the nodes left
without users are removed. A program with nothing to rewrite is not touched.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from qpasses.ir.fx_edit import non_meta_users, parameter_of

aten = torch.ops.aten
LINEAR = aten.linear.default
PRODUCTS = {aten.matmul.default, aten.mm.default, aten.addmm.default}  # (x, W) args, addmm: (b, x, W)
TRANSPOSES = {aten.t.default, aten.numpy_T.default, aten.permute.default, aten.transpose.int}


def canonicalize_linears(programs) -> None:
    """Rewrite every matmul of an activation by a parameter matrix in `programs` (a
    `capture.Programs`) as `aten.linear`; in place."""
    found = {name: _products(ep) for name, ep in programs.programs().items()}
    stored_kn = _transposable(programs, found)
    transposed: dict[str, torch.nn.Parameter] = {}
    for name, ep in programs.programs().items():
        for node, weight, kn in found[name]:
            key = parameter_of(ep, weight)
            if kn and key not in stored_kn:
                continue
            if kn:
                _store_transposed(ep, weight, key, transposed)
            _rewrite(ep, node, weight)
        if found[name]:
            ep.graph.lint()
            ep.graph_module.recompile()


def _products(ep: ExportedProgram) -> list[tuple[torch.fx.Node, torch.fx.Node, bool]]:
    """(product node, weight placeholder, True when the weight is read as [K, N]) for every
    matmul / mm / addmm whose right operand is a 2-D parameter or its transpose."""
    found = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target not in PRODUCTS or node.kwargs:
            continue
        w = node.args[-1]
        if _is_transpose(w) and _matrix(ep, w.args[0]):
            found.append((node, w.args[0], False))
        elif _matrix(ep, w):
            found.append((node, w, True))
    return [f for f in found if f[0].target is not aten.addmm.default or _is_bias(ep, f[0].args[0], f[0])]


def _matrix(ep: ExportedProgram, node) -> bool:
    return parameter_of(ep, node) is not None and node.meta["val"].dim() == 2


def _is_transpose(node) -> bool:
    if not isinstance(node, torch.fx.Node) or node.target not in TRANSPOSES or node.args[0].meta["val"].dim() != 2:
        return False
    if node.target is aten.permute.default:
        return [d % 2 for d in node.args[1]] == [1, 0]
    if node.target is aten.transpose.int:
        return {d % 2 for d in node.args[1:3]} == {0, 1}
    return True


def _is_bias(ep: ExportedProgram, b, product: torch.fx.Node) -> bool:
    """True when `b` is a parameter of one value per output column of `product` ([N]): a site's bias."""
    return parameter_of(ep, b) is not None and tuple(b.meta["val"].shape) == tuple(product.meta["val"].shape[-1:])


def _transposable(programs, found) -> set[str]:
    """Parameter keys read as [K, N] whose every reader in every program is such a product."""
    readers: dict[str, set[torch.fx.Node]] = {}
    for name, ep in programs.programs().items():
        for node, weight, kn in found[name]:
            if kn:
                readers.setdefault(parameter_of(ep, weight), set()).add(node)
    tied = programs.tied_names()
    return {key for key, nodes in readers.items() if key not in tied and all(
        set(non_meta_users(p)) <= nodes for ep in programs.programs().values()
        for p in ep.graph.nodes if p.op == "placeholder" and parameter_of(ep, p) == key)}


def _store_transposed(ep: ExportedProgram, weight: torch.fx.Node, key: str, done: dict) -> None:
    """Hold parameter `key` as its transpose in `ep` (one new tensor shared by the programs)."""
    from qpasses.offload import to_file

    if key not in done:
        done[key] = torch.nn.Parameter(to_file(ep.state_dict[key].detach().t()), requires_grad=False)
    if ep.state_dict[key] is not done[key]:
        ep.state_dict[key] = done[key]
        fake = weight.meta["val"]
        weight.meta["val"] = fake.fake_mode.from_tensor(done[key], static_shapes=True)
        weight.meta.pop("tensor_meta", None)


def _rewrite(ep: ExportedProgram, node: torch.fx.Node, weight: torch.fx.Node) -> None:
    """Replace product `node` (and the bias add or view back that follows it) by one linear."""
    x = node.args[-2]
    bias, last = (node.args[0], node) if node.target is aten.addmm.default else _added_bias(ep, node)
    flat = _flattened(x, last)
    if flat is not None:
        x, last = flat
    with node.graph.inserting_before(last):
        linear = node.graph.call_function(LINEAR, (x, weight) if bias is None else (x, weight, bias))
    linear.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
    linear.meta.update({k: v for k, v in last.meta.items() if k in ("val", "tensor_meta")})
    last.replace_all_uses_with(linear)
    _erase_unused(last)


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _added_bias(ep: ExportedProgram, node: torch.fx.Node) -> tuple[torch.fx.Node | None, torch.fx.Node]:
    """(b, the add) when the product's only reader adds a parameter b [N] to it, else (None, node)."""
    add = _only_user(node)
    if add is None or add.target is not aten.add.Tensor or add.kwargs or add.args.count(node) != 1:
        return None, node
    b = next(a for a in add.args if a is not node)
    return (b, add) if _is_bias(ep, b, node) else (None, node)


def _flattened(x, last: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(x0, view back) when x = view(x0, [-1, K]) and the result's only reader views it back to
    [*x0.shape[:-1], N]: the flattening is then the linear's own."""
    back = _only_user(last)
    if x.target is not aten.view.default or back is None or back.target is not aten.view.default:
        return None
    x0 = x.args[0]
    if not isinstance(x0, torch.fx.Node) or str(x0.meta["val"].shape[-1]) != str(x.meta["val"].shape[-1]):
        return None
    want = [*x0.meta["val"].shape[:-1], last.meta["val"].shape[-1]]
    return (x0, back) if list(map(str, back.meta["val"].shape)) == list(map(str, want)) else None


def _erase_unused(node: torch.fx.Node) -> None:
    """Erase `node` and then every producer it leaves without users (placeholders stay)."""
    if node.op != "call_function" or node.users or node.is_impure():
        return
    inputs = node.all_input_nodes
    node.graph.erase_node(node)
    for n in inputs:
        _erase_unused(n)
