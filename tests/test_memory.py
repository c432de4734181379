"""What a run lets go of: stage A (the torch programs and their float weights) once it is
exported, and the float initializers the packed ops replaced as soon as lowering is done."""

import gc
import weakref

from qpasses import compiler
from qpasses.passes import lower_linears


def test_stage_a_and_replaced_float_weights_are_freed_before_the_deployment_is_written(tmp_path, monkeypatch):
    exported, checked = [], []
    to_stage_b, drop_unread = compiler.to_stage_b, lower_linears._drop_unread

    def export(fx_graph):
        exported.append(weakref.ref(fx_graph))
        return to_stage_b(fx_graph)

    def after_lowering(graph):
        drop_unread(graph)
        gc.collect()
        checked.append((exported[0]() is None, [n for n, v in graph.initializers.items() if not v.uses()]))

    monkeypatch.setattr(compiler, "to_stage_b", export)
    monkeypatch.setattr(lower_linears, "_drop_unread", after_lowering)
    compiler.compile("tiny-llama", "int4-w4a16-rtn", tmp_path / "out", no_eval=True, progress=False)
    assert checked and all(freed and not unread for freed, unread in checked)


def test_weights_in_mapped_files_give_the_same_bytes_and_leave_no_mapping(tmp_path, monkeypatch):
    """Weights kept in mapped files (qpasses.offload) change no byte of the deployment; a run that
    keeps every edited weight on the heap is the reference."""
    from qpasses import offload
    from qpasses.checkpoint import partial_dir

    def run(out):
        compiler.compile("tiny-llama", "int4-w4a16", out, no_eval=True, progress=False, threads=1, calib_windows=8)

    gc.collect()
    before = offload.mapped_bytes()  # other tests' fixtures may hold mapped weights
    run(tmp_path / "mapped")
    monkeypatch.setattr(offload, "to_file", lambda t, folder=None: t.detach().clone())
    run(tmp_path / "heap")
    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "mapped" / name).read_bytes() == (tmp_path / "heap" / name).read_bytes(), name
    assert not partial_dir(tmp_path / "mapped").exists()
    gc.collect()
    assert offload.mapped_bytes() <= before  # the runs add no lasting mapping: it went with the programs
