"""Which linears a run leaves in float, and why: no linear the recipe quantizes stays a float matmul.

After lowering, every linear site still holding a float weight must be one the recipe opted out of:
a pattern of its top-level `ignore`, or of the `ignore` of every weight pass (the passes with
`plans_linears`) it runs. Those are returned with the pattern that kept them (report.json's
`unquantized_sites`); any other is an error naming it (a layer a weight pass did not see, say).
A recipe without a weight pass quantizes nothing, so nothing it leaves in float is unexpected.
"""

from __future__ import annotations

from qpasses.errors import PostconditionError


def _opted_out(site, ignore: tuple[str, ...], weight_passes: list) -> str | None:
    """Why `site` is kept in float on purpose, or None when some weight pass was meant to take it."""
    hit = next((g for g in ignore if site.matches([g])), None)
    if hit is not None:
        return f"ignored by recipe pattern '{hit}'"
    why = [next((f"ignored by {p.name} pattern '{g}'" for g in p.ignore if site.matches([g])), None)
           for p in weight_passes]
    return None if None in why else why[0]


def unquantized_sites(graph, passes: list, ignore: tuple[str, ...]) -> list[dict]:
    """The float linears of a lowered stage-B `graph`, each {name, shape, reason}; raises
    PostconditionError naming those no ignore pattern of the recipe kept in float."""
    weight_passes = [p for p in passes if p.plans_linears]
    if not weight_passes:
        return []
    kept, unexpected = [], []
    for site in graph.sites():
        why = _opted_out(site, tuple(ignore), weight_passes)
        if why is None:
            unexpected.append(site.describe())
        else:
            kept.append({"name": site.name, "shape": list(site.shape), "reason": why})
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise PostconditionError(
            f"{len(unexpected)} linear(s) the recipe quantizes are still float matmuls after lower_linears: "
            f"{', '.join(unexpected[:5])}{more}; no weight pass planned them. Add them to the recipe's ignore "
            f"list to keep them in float on purpose")
    return kept
