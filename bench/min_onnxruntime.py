"""Check runtime.min_ort against real onnxruntime releases: each deployed folder must load and run one
step on the version it computes, and fail on the release before it.

    .venv/bin/python bench/min_onnxruntime.py FOLDER... [--versions 1.17.3 1.18.1 ...] [--cache DIR]

A FOLDER is a `qpasses run` output (its KV-cache graph model.onnx; the folder's libqpasses_ops.so,
else the installed one, is registered when the graph imports the qpasses domain). Every version gets
its own virtualenv under --cache (default /tmp/minort; made once with `pip install onnxruntime==V
numpy<2`). One step: input_ids of 5 tokens, an empty past, the logits compared with this venv's
onnxruntime. Prints one table row per folder: the computed minimum and why, then per version ok /
FAIL (first line of the error).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import onnx

from qpasses.domain import DOMAIN
from qpasses.runtime import library_path
from qpasses.runtime.min_ort import minimum_onnxruntime, version_key

VERSIONS = ("1.16.3", "1.17.3", "1.18.1", "1.19.2", "1.20.1", "1.21.1", "1.22.1", "1.23.2")
# Runs in the old onnxruntime's venv (numpy and onnxruntime only): argv = graph, library or "", ref.npy.
STEP = r"""
import sys
import numpy as np
import onnxruntime as ort
graph, lib, ref = sys.argv[1:4]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
try:
    if lib:
        so.register_custom_ops_library(lib)
    s = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
except Exception as e:
    print("FAIL load: " + str(e).strip().splitlines()[0][:200]); sys.exit()
seq = 5
feed = {}
for i in s.get_inputs():
    if i.name == "input_ids":
        feed[i.name] = np.array([[1, 5, 9, 13, 2]], np.int64)
    elif i.name == "attention_mask":
        feed[i.name] = np.ones((1, seq), np.int64)
    elif i.name == "position_ids":
        feed[i.name] = np.arange(seq, dtype=np.int64)[None]
    else:
        shape = [1 if isinstance(d, str) and "batch" in d else 0 if isinstance(d, str) else d for d in i.shape]
        feed[i.name] = np.zeros(shape, np.float16 if "float16" in i.type else np.float32)
try:
    logits = s.run(["logits"], feed)[0]
except Exception as e:
    print("FAIL run: " + str(e).strip().splitlines()[0][:200]); sys.exit()
if not __import__("os").path.exists(ref):
    np.save(ref, logits)
    print("ok"); sys.exit()
print(f"ok (logits within {np.abs(logits - np.load(ref)).max():.1e} of the installed onnxruntime's)")
"""


def venv_python(cache: Path, version: str) -> Path:
    """The python of a virtualenv holding onnxruntime==version (made once)."""
    env = cache / f"v{version}"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                        f"onnxruntime=={version}", "numpy<2"], check=True)
    return python


def graph_of(folder: Path) -> Path:
    """The KV-cache step graph, model.onnx."""
    if not (folder / "model.onnx").is_file():
        raise SystemExit(f"{folder} holds no model.onnx")
    return folder / "model.onnx"


def step(python: Path, graph: Path, lib: str, ref: Path) -> str:
    out = subprocess.run([str(python), "-c", STEP, str(graph), lib, str(ref)], capture_output=True, text=True)
    lines = (out.stdout.strip() or out.stderr.strip() or f"exit {out.returncode}").splitlines()
    return lines[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--versions", nargs="+", default=VERSIONS)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/minort"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    pythons = {v: venv_python(args.cache, v) for v in args.versions}
    wrong = 0
    for folder in args.folders:
        graph = graph_of(folder)
        proto = onnx.load(str(graph), load_external_data=False)
        lib = ""
        if any(o.domain == DOMAIN for o in proto.opset_import):
            lib = str(folder / "libqpasses_ops.so") if (folder / "libqpasses_ops.so").is_file() else str(library_path())
        need, reasons = minimum_onnxruntime(proto)
        ref = args.cache / f"ref-{folder.name}.npy"
        ref.unlink(missing_ok=True)
        step(Path(sys.executable), graph, lib, ref)  # this venv's logits
        print(f"{folder.name}: needs {need} ({'; '.join(reasons)})")
        for v in args.versions:
            result = step(pythons[v], graph, lib, ref)
            expect_ok = version_key(v)[:2] >= version_key(need)[:2]
            agrees = result.startswith("ok") == expect_ok
            wrong += not agrees
            print(f"  {v:8} {result}{'' if agrees else '   <-- disagrees with the table'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
