"""What passes record for the deployment's manifest.json: one declared structure, written whole.

A pass writes only into these fields (the class has slots: an undeclared name is an
AttributeError, not a key the manifest silently drops); `compiler.manifest` copies every field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(slots=True)
class Notes:
    # rotate_residual / rotate_inputs / rotate_heads: per rotation ("residual", "online.SITE",
    # "heads.SITE"), its kind, size and seed
    rotations: dict[str, dict] = field(default_factory=dict)
    # smooth_inputs: {"skipped": [sites], "classes": {class: policy ladder}, "sites": {site: errors}}
    smoothing: dict[str, object] = field(default_factory=dict)
    # optimize_weights: per site, the method and its layer error against round to nearest
    weights: dict[str, dict] = field(default_factory=dict)
    # optimize_weights with a low-rank budget: bits per weight asked, spent, rank per site group
    lowrank_budget: dict[str, object] = field(default_factory=dict)
    # lower_linears: the session config entries onnxruntime must be given (also in the ONNX metadata)
    ort: dict[str, dict] = field(default_factory=dict)
    # a pass that found its sites but could apply at none of them (smooth_inputs on a GELU MLP):
    # pass name -> why; the run goes on without it, with a warning
    not_applied: dict[str, str] = field(default_factory=dict)
    # fuse_attention / fuse_rotations: pass name -> why the first sites left unfused stayed so
    misses: dict[str, list[str]] = field(default_factory=dict)
    # fuse_attention: the positions the decoder serves, {"model": max_position_embeddings (None: not
    # known), "recipe": fuse_attention.max_positions (None: not set), "cap": --max-context (None),
    # "rotary_rows": the rows of its rotary tables}; empty when no table was built
    max_context: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)
