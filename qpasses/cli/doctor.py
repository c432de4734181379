"""`qpasses doctor`: is this machine ready to run qpasses files? Checks the onnxruntime version
against the API level the runtime library was built for, that the library loads, which kernel
paths (ISAs) this CPU and build run, and runs a small op of every kind under every path against
the numpy reference; given a deployed folder (or .onnx file), also the onnxruntime version against
the oldest its graphs run on. Prints one line per check and what to do when one fails."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

DESCRIPTION = __doc__.split("`: ", 1)[1]
API_LEVEL = 17  # the ORT API level the library asks for (QPASSES_ORT_API in runtime/src/ops.cc)
# (op, act_bits, act_format, act_block): weight-only, W4A8, W4A4 of both ops
CASES = (("MatMulMXFP4", 0, "int", 32), ("MatMulMXFP4", 8, "int", 32), ("MatMulMXFP4", 4, "mxfp", 32),
         ("MatMulInt4", 0, "int", 32), ("MatMulInt4", 8, "int", 32), ("MatMulInt4", 4, "int", 0))


class Report:
    def __init__(self):
        self.failed = 0

    def line(self, ok: bool, what: str, detail: str, fix: str = "") -> bool:
        print(f"[{'ok' if ok else 'FAIL':>4}] {what}: {detail}")
        if not ok:
            self.failed += 1
            if fix:
                print(f"       what to do: {fix}")
        return ok


def check_versions(rep: Report) -> bool:
    import onnxruntime as ort

    major, minor = (int(x) for x in ort.__version__.split(".")[:2])
    return rep.line((major, minor) >= (1, API_LEVEL), "onnxruntime",
                    f"{ort.__version__} (the library needs ORT API level {API_LEVEL}: onnxruntime >= 1.{API_LEVEL})",
                    f"pip install 'onnxruntime>=1.{API_LEVEL}' (the project pins the tested one)")


def graph_files(target: Path) -> list[Path]:
    """The ONNX graphs of a folder (or the one file given)."""
    from qpasses.errors import InputError

    if target.is_dir():
        files = sorted(target.glob("*.onnx"))
        if not files:
            raise InputError(f"{target} holds no .onnx file; give a folder written by qpasses run, or a .onnx file")
        return files
    if not target.is_file():
        raise InputError(f"{target} does not exist")
    return [target]


def folder_need(target: Path) -> tuple[str, list[str], str]:
    """(version, reasons, source) the graphs of `target` need: their qpasses.onnxruntime_min
    metadata when every graph has it (source "metadata"), else computed from the graphs ("graphs")."""
    import onnx

    from qpasses.errors import InputError
    from qpasses.runtime.min_ort import METADATA_KEY, combine, minimum_onnxruntime

    needs, source = [], "metadata"
    for path in graph_files(target):
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001  (protobuf decode errors have no common public base)
            raise InputError(f"{path} is not a readable ONNX file: {str(e).strip().splitlines()[0][:200]}") from e
        meta = {p.key: p.value for p in proto.metadata_props}
        if METADATA_KEY in meta:
            entry = json.loads(meta[METADATA_KEY])
            needs += [(entry["version"], why) for why in entry.get("reasons", [])] or [(entry["version"], "")]
        else:
            version, reasons = minimum_onnxruntime(proto)
            needs += [(version, why) for why in reasons]
            source = "graphs"
    version, reasons = combine(needs)
    return version, [r for r in reasons if r], source


def check_folder(rep: Report, target: Path) -> bool:
    import onnxruntime as ort

    from qpasses.errors import InputError
    from qpasses.runtime.min_ort import version_key

    try:
        need, reasons, source = folder_need(target)
    except (InputError, ValueError, KeyError, TypeError) as e:
        return rep.line(False, f"graphs of {target}", str(e).splitlines()[0],
                        "give a folder written by qpasses run, or a .onnx file")
    ok = version_key(ort.__version__) >= version_key(need)
    return rep.line(ok, f"graphs of {target}",
                    f"need onnxruntime >= {need} (from the {source}: {'; '.join(reasons)}), "
                    f"{ort.__version__} is installed",
                    f"pip install 'onnxruntime>={need}'")


def check_folder_library(rep: Report, target: Path) -> bool:
    """A folder whose graphs use our ops holds its copy of the library (runners load it from there)."""
    import onnx

    from qpasses.domain import DOMAIN
    from qpasses.runtime import LIBRARY_NAME

    if not target.is_dir():
        return True
    users = [p.name for p in graph_files(target)
             if DOMAIN in {o.domain for o in onnx.load(str(p), load_external_data=False).opset_import}]
    if not users:
        return True
    present = (target / LIBRARY_NAME).is_file()
    return rep.line(present, f"library of {target}",
                    f"{LIBRARY_NAME} is in the folder (the runners load it from there)" if present else
                    f"{', '.join(users)} uses the {DOMAIN} ops but {target / LIBRARY_NAME} does not exist",
                    f"copy it there: cp \"$(python -c 'import qpasses.runtime as r; print(r.library_path())')\" "
                    f"{target}/ (or compile again without --no-runtime-copy)")


def check_library(rep: Report) -> bool:
    from qpasses.errors import InputError
    from qpasses.runtime import library_path

    try:
        path = library_path()
    except InputError as e:
        return rep.line(False, "runtime library", str(e), "./dev setup (or pip install -e .) rebuilds runtime/")
    return rep.line(True, "runtime library", str(path))


def run_case(case, isa: str, tmp: Path, rng) -> float:
    """Worst error / tolerance of one op under one ISA (raises on a load, run or accuracy failure)."""
    import numpy as np
    import onnx

    from qpasses.runtime import session
    from qpasses.runtime.op_models import op_model, random_weights
    from qpasses.runtime.ops import OpConfig
    from qpasses.runtime.reference import check_close, reference

    op, bits, fmt, block = case
    cfg = OpConfig(op, K=96, N=40, act_bits=bits, act_format=fmt, act_block=block)
    inputs = random_weights(cfg, rng)
    model, _ = op_model(cfg, inputs, ("M", cfg.K))
    path = tmp / f"{op}-{bits}.onnx"
    onnx.save(model, path)
    a = rng.standard_normal((3, cfg.K)).astype(np.float32)
    os.environ["QPASSES_ISA"] = isa
    y = session(path, threads=1).run(["Y"], {"A": a})[0]
    ref, bound = reference(cfg, a, inputs["B"], inputs.get("E", inputs.get("scales")))
    return check_close(y, ref, bound)


def check_kernels(rep: Report) -> bool:
    import numpy as np

    from qpasses.runtime import available_isas

    isas = available_isas()
    saved = os.environ.get("QPASSES_ISA")
    used = (f"QPASSES_ISA={saved} is set: sessions use it" if saved
            else f"sessions use {isas[-1]} (QPASSES_ISA overrides)")
    rep.line(True, "CPU kernel paths", f"{', '.join(isas)}; {used}")
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for isa in isas:
                worst, errors = 0.0, []
                for case in CASES:
                    try:
                        worst = max(worst, run_case(case, isa, Path(tmp), np.random.default_rng(0)))
                    except Exception as e:  # noqa: BLE001  (a doctor reports every failure, it does not stop)
                        errors.append(f"{case[0]} act_bits={case[1]}: {str(e).splitlines()[0][:200]}")
                ok &= rep.line(not errors, f"kernels, {isa}",
                               f"{len(CASES)} ops (MXFP4 and INT4; weight-only, W4A8, W4A4) match the numpy reference, "
                               f"worst error {worst:.2f} of the tolerance" if not errors else "; ".join(errors),
                               "rebuild the library (./dev setup); if one ISA alone fails, run with "
                               f"QPASSES_ISA={isas[0]} and report the line above")
    finally:
        if saved is None:
            os.environ.pop("QPASSES_ISA", None)
        else:
            os.environ["QPASSES_ISA"] = saved
    return ok


def run(args) -> int:
    rep = Report()
    folder = getattr(args, "folder", None)
    if folder is not None:
        if check_folder(rep, folder):
            check_folder_library(rep, folder)
    if check_versions(rep) and check_library(rep):
        check_kernels(rep)
    print("all checks passed" if not rep.failed else f"{rep.failed} check(s) failed", file=sys.stderr)
    return 0 if not rep.failed else 1
