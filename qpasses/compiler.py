"""The compiler: one call from a model and a recipe to a deployed folder and a report.

    import qpasses
    report = qpasses.compile("smollm2-135m", "int4-w4a16", "out/int4")

Order of work: validate the recipe and the output folder (fail fast), load the model, measure
the float model, run the passes (stage A in torch, export, stage B in ONNX), measure the stage-A
model in torch, save the deployment atomically, measure the deployed file in onnxruntime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from qpasses.calibration.source import CalibrationSource
from qpasses.checkpoint import SCRATCH, Checkpoint, partial_dir
from qpasses.errors import InputError
from qpasses.export.deploy import check_destination, staged
from qpasses.memory import release_free_memory
from qpasses.passes.base import Context, Positions
from qpasses.passes.coverage import unquantized_sites
from qpasses.passes.manager import PassManager
from qpasses.passes.notes import Notes
from qpasses.recipe import DEFAULT_RECIPE, load_recipe
from qpasses.runtime.min_ort import METADATA_KEY as ORT_MIN_KEY
from qpasses.runtime.min_ort import minimum_onnxruntime, record


@dataclass
class Options:
    model: str = "smollm2-135m"
    recipe: str = DEFAULT_RECIPE
    out: Path | None = None
    tokenizer: str | None = None
    calib_windows: int = 128
    eval_windows: int = 80
    eval_text: Path | None = None
    no_eval: bool = False
    stage_a_eval: bool = True
    seed: int = 0
    threads: int | None = None
    sets: list[str] = field(default_factory=list)
    force: bool = False
    progress: bool = True
    dump_dir: Path | None = None
    layer_error: bool = True  # per-site layer error after each stage-A pass (evaluate.layer_error)
    max_context: int | None = None  # cap on the positions the decoder serves (its rotary tables' rows)
    runtime_copy: bool = True  # copy libqpasses_ops.so into the folder when the graph uses our ops

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path(f"{Path(self.model).stem}-{Path(self.recipe).stem}")


def compile(model: str = "smollm2-135m", recipe: str = DEFAULT_RECIPE, out: str | Path | None = None,
            **options) -> dict:
    """Compile `model` with `recipe` into `out`; returns the report (also written as report.json/.md)."""
    return run(Options(model=model, recipe=recipe, out=Path(out) if out else None, **options))


def run(opts: Options, log=print) -> dict:
    from qpasses.offload import scratch
    from qpasses.profiling import Profile

    # values kept in mapped files (loaded and finished weights) go beside the output, on its disk
    folder = partial_dir(opts.out_dir()) / SCRATCH
    try:
        with Profile() as prof, scratch(folder):
            return _run(opts, log, prof)
    finally:  # its files were unlinked once mapped; a checkpoint beside it stays for resuming
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # only when empty: nothing was checkpointed


def _run(opts: Options, log, prof) -> dict:
    import torch

    from qpasses import report as rep
    from qpasses.evaluate import measure
    from qpasses.profiling import stage

    t_start = time.perf_counter()
    recipe = load_recipe(opts.recipe).with_sets(opts.sets)
    passes = recipe.instantiate()
    out = opts.out_dir()
    check_destination(out, opts.force)
    if opts.max_context is not None and (isinstance(opts.max_context, bool) or not isinstance(opts.max_context, int)
                                         or opts.max_context < 1):
        raise InputError(f"--max-context must be a positive number of positions, got {opts.max_context!r}")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)

    from qpasses.load import load_model

    with stage("load"):
        loaded = load_model(opts.model, opts.tokenizer)
    release_free_memory()  # between here and the layer-sequential passes, full forwards read every weight
    log(f"model {loaded.name} ({loaded.kind}); recipe {recipe.name}: {recipe.description}")
    if not opts.no_eval and loaded.kind == "torch" and not loaded.model.can_generate():
        raise InputError(f"{loaded.name} is not a causal language model ({type(loaded.model).__name__}), so it has "
                         f"no perplexity; pass --no-eval")
    evaluator = measure.Evaluator(loaded.tokenizer, None if opts.no_eval else opts.eval_windows, opts.eval_text,
                                  opts.threads, opts.progress)
    checkpoint = Checkpoint(partial_dir(out), resume_key(opts, recipe, loaded), log)
    ctx = Context(ignore=recipe.ignore, overrides=recipe.overrides, seed=opts.seed, checkpoint=checkpoint,
                  positions=positions(loaded, opts.max_context),
                  calibration=CalibrationSource(loaded.tokenizer, opts.calib_windows, opts.seed,
                                                progress=opts.progress))
    ppl = {"fp": None, "stage_a": None, "quant": None}
    with stage("evaluate"):
        if loaded.kind == "torch":
            ppl["fp"] = evaluator.torch_fp(loaded)
        else:
            ppl["fp"] = evaluator.ort(loaded.onnx_path, "fp (ONNX input)")
    release_free_memory()
    t_quant = time.perf_counter()
    configs = None
    if loaded.kind == "torch":
        with stage("capture"):
            graph = stage_a(loaded.model)
        # The programs now hold the weights, and replace them one by one: a model kept here would
        # be a second full copy of the weights by the end of stage A.
        configs = model_configs(loaded.model)  # for the runners' files, written with the folder
        loaded = dataclasses.replace(loaded, model=None, parameters=rep.weight_count(loaded))
        release_free_memory()
    else:
        graph = stage_b_from_file(loaded.onnx_path)
    t_eval = {"seconds": 0.0}

    def on_stage_change(fx_graph):
        if not opts.stage_a_eval:
            return
        t = time.perf_counter()
        with stage("evaluate"):
            ppl["stage_a"] = evaluator.torch_program(fx_graph.programs.logits, "stage A")
        release_free_memory()  # the mapped weights it read
        t_eval["seconds"] += time.perf_counter() - t

    probe = None
    if opts.layer_error:
        from qpasses.evaluate.layer_error import LayerErrorProbe

        probe = LayerErrorProbe(passes, log=log)
        with stage("layer_error"):
            probe.start(graph, ctx)
        release_free_memory()

    unquantized: list[dict] = []

    def after_pass(g, result):
        if probe:
            with stage("layer_error"):
                probe.after(g, ctx, result)
        if result.name == "lower_linears":
            unquantized[:] = unquantized_sites(g, passes, recipe.ignore)
            if unquantized:
                log(f"warning: {len(unquantized)} linear(s) kept in float: " + ", ".join(
                    f"{s['name']} ({s['reason']})" for s in unquantized))
        release_free_memory()  # e.g. the mapped weights a postcondition read
    manager = PassManager(passes, to_onnx=to_stage_b, on_stage_change=on_stage_change, dump_dir=opts.dump_dir, log=log,
                          after_pass=after_pass)
    # The manager holds the only reference: once it exports, stage A (the programs and their float
    # weights, which lowering replaces in the ONNX graph) can be freed before lowering, write and
    # the deployed model's evaluation.
    handed = [graph]
    del graph
    final, results = manager.run(handed.pop(), ctx)
    metadata = provenance(recipe, results, loaded, ctx)
    with staged(out, opts.force) as folder:  # the folder appears whole, report included, or not at all
        with stage("write"):
            runtime = save(final, folder, loaded, recipe, metadata, ctx.notes.max_context, opts.runtime_copy, configs)
        probe_seconds = probe.seconds if probe else 0.0
        quantize_seconds = time.perf_counter() - t_quant - t_eval["seconds"] - probe_seconds
        rep.write_json(folder / "manifest.json", manifest(recipe, results, loaded, metadata, ctx.notes, runtime))
        with stage("evaluate"):
            ppl["quant"] = evaluator.ort(folder / "model.onnx", "deployed (onnxruntime)")
        report = rep.build(opts, folder, recipe, loaded, results, ppl, evaluator, quantize_seconds,
                           time.perf_counter() - t_start, layer_error=probe.table if probe else {},
                           profile=prof.table(), unquantized_sites=unquantized)
        rep.write(report, folder)
    checkpoint.remove()  # the deployment is in place: nothing is left to resume
    log(rep.render_markdown(report))
    return report


def resume_key(opts: Options, recipe, loaded) -> dict:
    """What a checkpoint must match to be resumed: everything that changes the bytes a solve writes."""
    import torch

    from qpasses import __version__

    return {"model": str(loaded.source.get("sha256") or loaded.name), "recipe": recipe.sha256, "sets": list(opts.sets),
            "tokenizer": opts.tokenizer, "calib_windows": opts.calib_windows, "seed": opts.seed,
            "threads": torch.get_num_threads(), "qpasses": __version__, "torch": torch.__version__}


def positions(loaded, cap: int | None) -> Positions:
    """What the loaded model's config says about positions (an ONNX input has no config), with the cap."""
    config = getattr(loaded.model, "config", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    # one dict, or one per layer type (Gemma 3: full / sliding attention)
    kinds = [rope] if not all(isinstance(v, dict) for v in rope.values()) else list(rope.values())
    types = tuple(sorted({k.get("rope_type", k.get("type", "default")) for k in kinds})) or ("default",)
    return Positions(model=getattr(config, "max_position_embeddings", None), cap=cap, rope_types=types)


def stage_a(model):
    from qpasses.export.capture import capture
    from qpasses.ir.fx_stage import FxStage

    return FxStage(capture(model))


def to_stage_b(fx_graph):
    from qpasses.export.onnx_export import to_onnx
    from qpasses.ir.fx_ops import TRANSLATIONS
    from qpasses.ir.onnx_stage import OnnxStage

    models = to_onnx(fx_graph.programs, TRANSLATIONS)
    graphs = {"logits": models.logits}
    if models.decoder is not None:
        graphs["decoder"] = models.decoder
    return OnnxStage(graphs)


def stage_b_from_file(path: Path):
    import onnx_ir as ir

    from qpasses.ir.onnx_stage import OnnxStage

    return OnnxStage({"logits": ir.load(path)})


def provenance(recipe, results, loaded, ctx) -> dict[str, str]:
    """ONNX metadata of the deployed graphs: what made them, and how onnxruntime must run them."""
    from qpasses import __version__
    from qpasses.report import versions

    return {
        "qpasses.version": __version__,
        "qpasses.recipe": recipe.name,
        "qpasses.recipe_sha256": recipe.sha256,
        "qpasses.rules": json.dumps({r.name: r.rewrites for r in results}),
        "qpasses.model": loaded.name,
        "qpasses.model_sha256": str(loaded.source.get("sha256", "")),
        "qpasses.ort": json.dumps(ctx.notes.ort),
        "qpasses.versions": json.dumps({**versions(), "python": platform.python_version()}),
    }


def manifest(recipe, results, loaded, metadata: dict[str, str], notes: Notes, runtime: dict | None = None) -> dict:
    """manifest.json: the recipe as run, per-rule counts, the rotations chosen (with their seeds),
    the smoothing scales' policies and errors, the
    optimized weights' layer errors (rtn vs optimized), the model's provenance, the custom-op library
    the graph needs (`runtime`: file, platform, whether the folder holds it) and tool versions."""
    return {
        "recipe": {"name": recipe.name, "sha256": recipe.sha256, "text": recipe.text},
        "passes": [r.to_json() for r in results],
        "model": {"name": loaded.name, "kind": loaded.kind, "source": {k: str(v) for k, v in loaded.source.items()}},
        **notes.to_json(),
        "runtime": runtime or {},
        "versions": json.loads(metadata["qpasses.versions"]),
        **({"onnxruntime_min": json.loads(metadata[ORT_MIN_KEY])} if ORT_MIN_KEY in metadata else {}),
    }


def model_configs(model) -> dict:
    """The model's Hugging Face config and generation config as dicts, and its class name
    ({"config", "generation", "architecture"})."""
    generation = getattr(model, "generation_config", None)
    return {"config": model.config.to_dict(), "generation": generation.to_dict() if generation is not None else None,
            "architecture": type(model).__name__}


def save(final, folder: Path, loaded, recipe, metadata: dict[str, str], max_context: dict | None = None,
         runtime_copy: bool = True, configs: dict | None = None) -> dict:
    """Write the folder's files but the report and manifest; returns the manifest's `runtime` record.
    `configs` (`model_configs`; None for an ONNX input) give the runners' files: genai_config.json,
    config.json and generation_config.json."""
    from qpasses.export.deploy import deployed_graph, write_deployment
    from qpasses.export.folder_readme import folder_readme
    from qpasses.export.genai_config import served_context, write_genai_config
    from qpasses.export.hf_files import write_hf_files
    from qpasses.export.onnx_export import OnnxModels
    from qpasses.export.runtime_copy import copy_runtime
    from qpasses.ir.cleanup import finalize

    models = OnnxModels(logits=final.models["logits"], decoder=final.models.get("decoder"))
    graph = deployed_graph(models)
    finalize(graph)
    # the oldest onnxruntime that runs the written graph: into its metadata, the manifest and README
    metadata[ORT_MIN_KEY] = json.dumps(record(*minimum_onnxruntime(graph)))
    write_deployment(models, folder, loaded.tokenizer, metadata)
    runtime = copy_runtime(graph, folder, runtime_copy)
    write_hf_files(folder, configs)
    if configs and models.decoder is not None:
        write_genai_config(folder, graph, configs["config"], configs["generation"],
                           served_context(max_context, configs["config"]), runtime.get("library"))
    files = {p.name for p in folder.iterdir()} | {"report.md", "report.json", "manifest.json"}  # those come last
    (folder / "README.md").write_text(folder_readme(loaded.name, recipe, metadata["qpasses.version"],
                                                    json.loads(metadata["qpasses.ort"]), set(graph.opset_imports),
                                                    max_context, files=files, step_graph=models.decoder is not None,
                                                    runtime=runtime, ort_min=json.loads(metadata[ORT_MIN_KEY])))
    return runtime
