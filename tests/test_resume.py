"""Resumable runs: an interrupted run leaves `<out>.partial/` with its finished groups, and a rerun
with the same arguments resumes from them to the same bytes as an uninterrupted run; a
checkpoint from another run is never reused; a finished run leaves no checkpoint."""

import numpy as np

from qpasses.checkpoint import Checkpoint, GroupStore, partial_dir
from qpasses.cli.main import main
from qpasses.passes.optimize_weights import OptimizeWeights

FILES = ("model.onnx", "model.onnx.data")


def run(out, *extra) -> int:
    return main(["run", "--model", "tiny-llama", "--recipe", "int4-w4a16", "--no-eval", "--no-layer-error",
                 "--threads", "1", "--calib-windows", "8", "--no-progress", "--out", str(out), *extra])


def counting_solves(monkeypatch, fail_at: int | None = None) -> list:
    """Count OptimizeWeights group solves; the `fail_at`-th one (0-based) is a Ctrl-C."""
    calls, solve = [], OptimizeWeights._solve

    def patched(self, sites, *args, **kwargs):
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        calls.append(sites[0].name)
        return solve(self, sites, *args, **kwargs)

    monkeypatch.setattr(OptimizeWeights, "_solve", patched)
    return calls


def test_an_interrupted_run_resumes_to_the_same_bytes(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    calls = counting_solves(monkeypatch)
    assert run(whole) == 0
    groups = len(calls)  # tiny-llama: 4 groups of linears per layer and the lm_head
    assert groups == 9 and not partial_dir(whole).exists()

    out = tmp_path / "out"
    monkeypatch.undo()
    counting_solves(monkeypatch, fail_at=4)
    assert run(out) != 0  # Ctrl-C after four groups
    assert not out.exists()
    saved = sorted(p.name for p in partial_dir(out).glob("*/group-*.npz"))
    assert saved == [f"group-{i:05d}.npz" for i in range(4)]

    monkeypatch.undo()
    calls = counting_solves(monkeypatch)
    capsys.readouterr()
    assert run(out) == 0
    assert "resuming after 4 of 9 groups" in capsys.readouterr().out
    assert len(calls) == groups - 4  # only the missing groups were solved
    for name in FILES:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert not partial_dir(out).exists()


def test_a_checkpoint_of_another_run_is_never_reused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    counting_solves(monkeypatch, fail_at=3)
    assert run(out) != 0
    assert partial_dir(out).is_dir()
    monkeypatch.undo()
    calls = counting_solves(monkeypatch)
    capsys.readouterr()
    assert run(out, "--seed", "1") == 0  # another calibration sample: the groups differ
    said = capsys.readouterr().out
    assert "belongs to another run (seed differ); starting over" in said and "resuming" not in said
    assert len(calls) == 9 and not partial_dir(out).exists()


def test_damaged_checkpoint_files_are_solved_again(tmp_path):
    folder = tmp_path / "out.partial"
    store = GroupStore(Checkpoint(folder, {"model": "a"}), 0, "optimize_weights")
    store.save(0, {"0.codes": np.zeros(3, np.uint8)}, {"sites": []})
    store.save(1, {"0.codes": np.ones(3, np.uint8)}, {"sites": []})
    arrays, meta = store.load(1)
    assert arrays["0.codes"].tolist() == [1, 1, 1] and meta == {"sites": []}
    path = store.folder / "group-00001.npz"
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert store.load(1) is None and store.load(0) is not None
    (folder / "key.json").write_text("{not json")
    Checkpoint(folder, {"model": "a"}, log=lambda line: None)  # a damaged key: the folder is another run's
    assert not folder.exists()
