"""Stage B collection: run an ONNX file with onnxruntime, its linear inputs exposed as outputs.

The file is read, never written: the values to watch are added as graph outputs to an
in-memory copy, and external weight files are read from the model's directory. Statistics
are over each watched value [..., K], flattened to [tokens, K], on windows[n, L] with an
all-ones attention mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from qpasses.calibration.collect_fx import batches, check_windows
from qpasses.calibration.stats import SiteStats, StatsSpec

EXTERNAL_DIR_KEY = "session.model_external_initializers_file_folder_path"


def _value_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    return {v.name: v.type for v in (*graph.input, *graph.output, *graph.value_info)}


def add_outputs(model: onnx.ModelProto, values: list[str]) -> None:
    """Make the graph also output `values` (names of values it computes), in place."""
    graph = model.graph
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    missing = [v for v in values if v not in produced]
    if missing:
        raise ValueError(f"the ONNX graph computes no value named {', '.join(missing)}")
    types = _value_types(graph)
    if any(v not in types for v in values):
        types.update(_value_types(onnx.shape_inference.infer_shapes(model).graph))
    present = {o.name for o in graph.output}
    for v in values:
        if v in present:
            continue
        if v not in types:
            raise ValueError(f"cannot infer the type of ONNX value {v}; add it to graph.value_info")
        graph.output.append(onnx.ValueInfoProto(name=v, type=types[v]))
        present.add(v)


def _feeds(model: onnx.ModelProto) -> list[tuple[str, np.dtype]]:
    """(name, dtype) of the graph inputs that are not initializers: input_ids[, attention_mask]."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) not in (1, 2):
        raise ValueError(f"expected inputs (input_ids[, attention_mask]), the model takes {[i.name for i in inputs]}")
    return [(i.name, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in inputs]


def collect_onnx(model_path: Path, sites: Mapping[str, str], windows: torch.Tensor, spec: StatsSpec,
                 batch_size: int = 4, progress: bool = True, threads: int | None = None) -> dict[str, SiteStats]:
    """Statistics of every site's input over windows[n, L], one onnxruntime run per batch.

    sites: site name -> name of the ONNX value feeding that linear (e.g. the first input of its
    MatMul). `threads` sets onnxruntime's intra-op threads (None: its default).
    Peak memory: the model, the statistics, and one batch's activations (all watched values of
    a batch are returned together).
    """
    model_path = Path(model_path)
    windows = check_windows(windows, spec)
    stats = {name: SiteStats(spec) for name in sites}
    if not sites:
        return stats
    values = list(dict.fromkeys(sites.values()))
    model = onnx.load(str(model_path), load_external_data=False)  # our copy; the file stays untouched
    add_outputs(model, values)
    feeds = _feeds(model)
    opts = ort.SessionOptions()
    opts.add_session_config_entry(EXTERNAL_DIR_KEY, str(model_path.resolve().parent))
    if threads is not None:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del model
    for ids in tqdm(batches(windows, batch_size), desc="calibrate (onnx)", disable=not progress):
        ids = ids.numpy()
        arrays = [ids, np.ones_like(ids)]
        outs = session.run(values, {name: a.astype(dt) for (name, dt), a in zip(feeds, arrays)})
        by_value = dict(zip(values, outs))
        for name, value in sites.items():
            stats[name].update(torch.from_numpy(by_value[value]))
    return stats
