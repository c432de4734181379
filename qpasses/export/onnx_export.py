"""Stage change: the captured torch programs -> onnx_ir models (stage B).

`to_onnx` runs the dynamo exporter at opset 21 (`capture.OPSET`) with optimize=False, so every
linear stays `MatMul(x, Transpose(W))` (`Gemm(transB=1)` for 2-D inputs) with W an initializer.
Two things are made reliable here:

- weight names: every initializer that holds a program parameter is named by its canonical
  Hugging Face name (`Programs.fqn`), so `initializer name == Programs fqn` joins the stages;
  a tied group is one initializer under its canonical name, used by both the embedding Gather
  and the lm_head MatMul (the exporter would otherwise pick any alias).
- dims: the exporter's symbols (s17, s70, ...) become batch_size, sequence_length,
  past_sequence_length, also inside expressions ("past_sequence_length + sequence_length" for
  present and the decoder mask).

Initializers wrap the programs' tensors without copying; `Programs.set_parameter` replaces a
tensor rather than writing into it, so an exported model is a snapshot of the programs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import onnx_ir as ir
import torch

from qpasses.export.capture import OPSET, Programs

_SEQ_AXES = {0: "batch_size", 1: "sequence_length"}
_PAST_AXES = {0: "batch_size", 2: "past_sequence_length"}
INPUT_AXES = {"input_ids": _SEQ_AXES, "position_ids": _SEQ_AXES, "attention_mask": {0: "batch_size"}}


@dataclass
class OnnxModels:
    """The exported graphs; `decoder` is None for models without a KV-cache program."""

    logits: ir.Model
    decoder: ir.Model | None


def to_onnx(programs: Programs, translations: dict | None = None) -> OnnxModels:
    """Export both programs. `translations` maps custom torch ops to onnxscript functions
    (`custom_translation_table` of the torch exporter)."""
    models = {name: _export(programs, name, translations) for name in programs.programs()}
    return OnnxModels(logits=models["logits"], decoder=models.get("decoder"))


def _export(programs: Programs, name: str, translations: dict | None) -> ir.Model:
    inputs, outputs = programs.io_names[name]
    exported = torch.onnx.export(
        programs.programs()[name], (), dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
        input_names=inputs, output_names=outputs, custom_translation_table=translations or None,
    )
    model = exported.model
    model.graph.name = name
    name_weights(model.graph, programs)
    name_dims(model.graph)
    return model


def name_weights(graph: ir.Graph, programs: Programs) -> None:
    """Rename parameter initializers to their canonical name; merge tied aliases into one."""
    for name, value in list(graph.initializers.items()):
        canonical = programs.fqn(name)
        if canonical == name:
            continue
        keep = graph.initializers.get(canonical)
        if keep is None:
            value.name = canonical
        else:
            value.replace_all_uses_with(keep)
            graph.initializers.pop(name)


def _axes(input_name: str) -> dict[int, str]:
    return _PAST_AXES if input_name.startswith("past_key_values.") else INPUT_AXES.get(input_name, {})


def name_dims(graph: ir.Graph) -> None:
    """Replace the exporter's dim symbols by readable names in every value's shape."""
    names = {}
    for v in graph.inputs:
        for axis, readable in _axes(v.name).items():
            dim = v.shape[axis] if v.shape is not None else None
            if isinstance(dim, ir.SymbolicDim) and dim.value and dim.value.isidentifier():
                names[dim.value] = readable
    if not names:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    values = list(graph.inputs) + [out for node in graph for out in node.outputs]
    for v in values:
        if v.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value for d in v.shape):
            v.shape = ir.Shape([
                ir.SymbolicDim(symbol.sub(lambda m: names[m[1]], d.value))
                if isinstance(d, ir.SymbolicDim) and d.value else d
                for d in v.shape
            ])
