"""`mfdeploy export`: build a verified artifact folder for one model, or nothing at all.

The folder is assembled under a temporary name and swapped in only when the graph has passed its
checks and ONNX Runtime has reproduced PyTorch's logits, so a failed export leaves no file behind.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from mfdeploy.artifacts import (
    MANIFEST_NAME,
    ONNX_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    Artifact,
    artifact_dir_name,
    check_output_dir,
    export_command,
    staged_dir,
    utc_now,
)
from mfdeploy.console import progress
from mfdeploy.environment import library_versions
from mfdeploy.errors import UserError
from mfdeploy.export import growth, onnx_export
from mfdeploy.export.options import EXPORT_TARGETS, STAGES, TARGET_STAGES, ExportOptions, check_ranges
from mfdeploy.export.verify import DYNAMIC_VERIFY_BATCHES, VerificationError, verify_runner
from mfdeploy.graph.checks import check_graph
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.manifest_schema import trained_on_record
from mfdeploy.model.complexity import measure
from mfdeploy.model.weights import LoadedModel, load_model, save_checkpoint
from mfdeploy.runtime.base import TensorSpec
from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from mfdeploy.runtime.torch_runner import TorchRunner


@dataclass
class ExportContext:
    """What a target stage works with: the staged folder, the model, the manifest being built."""

    options: ExportOptions
    loaded: LoadedModel
    preprocessing: Preprocessing
    artifact: Artifact  # rooted at the staging folder until the export succeeds
    final_root: Path  # where the artifact will be once the export succeeds (for messages)
    progress: Any
    notes: list[str] = field(default_factory=list)  # lines for the summary (e.g. "engine skipped: ...")
    exit_code: int = 0  # a stage may ask for a non-zero exit after a complete artifact (TensorRT missing)

    @property
    def root(self) -> Path:
        return self.artifact.root

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest


@dataclass
class ExportResult:
    artifact: Path
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0
    mode: str = "new"  # new, grow, remake, replace or unchanged: what happened to the folder (growth.py)
    kept: list[str] = field(default_factory=list)  # files of the folder that were there before and stay
    message: str = ""  # what happened to the folder, when it is not a plain new export (growth.plan_notes)


def _stage_function(name: str, function: str | None = None):
    """A stage's run function, or another function of its module (``check_stage``), or None."""
    module_name, run = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), function or run, None)


def check_options(options: ExportOptions) -> None:
    """Reject bad options before any work is done."""
    if options.target not in EXPORT_TARGETS:
        raise UserError(f"unknown target {options.target!r}; choose one of {', '.join(EXPORT_TARGETS)}")
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch must be a positive batch size, got {options.batch}; or use --dynamic-batch")
    if options.simplifier not in onnx_export.SIMPLIFIERS:
        raise UserError(
            f"unknown simplifier {options.simplifier!r}; choose one of {', '.join(onnx_export.SIMPLIFIERS)}"
        )
    onnx_export.check_opset(options.opset)
    check_ranges(options)


def _preprocessing(loaded: LoadedModel, imgsz: int | None) -> Preprocessing:
    """The checkpoint's own preprocessing when it has one for this size, else the ImageNet default."""
    trained = loaded.metadata.get("preprocessing")
    if isinstance(trained, dict) and (imgsz is None or int(trained.get("imgsz", -1)) == imgsz):
        return Preprocessing.from_dict(trained)
    return Preprocessing.for_size(imgsz or 224)


def export(options: ExportOptions) -> ExportResult:
    """Export ``options``' model into ``<out>/mobileformer_<size>/``, or grow the artifact already there.

    A folder holding the same model with the same graph settings keeps every file and gains what the target
    adds (``--force`` remakes only what this export makes); one holding another model is refused without
    ``--force`` and replaced with it (see :mod:`mfdeploy.export.growth`).
    """
    check_options(options)
    loaded = load_model(
        options.size, options.weights, options.num_classes, seed=options.seed, ema=options.ema, arch=options.arch
    )
    for stage in TARGET_STAGES[options.target]:
        # each stage refuses its bad options (and a missing library) before any export work
        stage_check = _stage_function(stage, "check_stage")
        if stage_check is not None:
            stage_check(options, loaded)
    preprocessing = _preprocessing(loaded, options.imgsz)
    final = Path(options.out) / artifact_dir_name(loaded.size)
    plan = _plan(final, options, loaded, preprocessing)
    if plan.mode == growth.UNCHANGED:
        return _unchanged_result(final, plan)
    if plan.mode == growth.NEW:
        check_output_dir(final, options.force)
    return _run(options, loaded, preprocessing, final, plan)


def grow_artifact(artifact: Artifact, target: str) -> ExportResult:
    """Add ``target``'s missing parts to an artifact folder as it is (whatever its name), from its own stored
    weights: what `parity`, `eval` and `bench` do when a target they were asked for needs a file the
    folder lacks. Nothing already there is remade."""
    from dataclasses import replace

    graph = artifact.manifest.get("onnx", {})
    options = ExportOptions(
        size=artifact.size,
        target=target,
        imgsz=artifact.imgsz,
        batch=artifact.static_batch,
        opset=graph.get("opset", ExportOptions.opset),
        simplifier=graph.get("simplifier", ExportOptions.simplifier),
        out=artifact.root.parent,
    )
    plan = _grow_plan(artifact, options)
    if plan.mode == growth.UNCHANGED:
        return _unchanged_result(artifact.root, plan)  # decided before any model is built
    model = artifact.manifest["model"]
    weights = artifact.path(WEIGHTS_FILE)  # checked by _grow_plan
    loaded = load_model(size=artifact.size, weights=weights, num_classes=artifact.num_classes)
    source = model.get("source") or {}
    random = source.get("weights") == "random"
    loaded = replace(
        loaded,
        weights="random" if random else str(source.get("weights")),
        weights_sha256=None if random else source.get("sha256"),
        seed=source.get("seed") if random else None,
        ema=source.get("ema") is True,  # the stored weights are the EMA ones: the export says so again
        metadata={"classes": model.get("classes")} if model.get("classes") else {},
    )
    return _run(options, loaded, artifact.preprocessing, artifact.root, plan)


def _plan(final: Path, options: ExportOptions, loaded: LoadedModel, preprocessing: Preprocessing) -> growth.Plan:
    """What this export does to ``final``: make it, grow it, remake its graph, replace it, or nothing."""
    existing = growth.existing_artifact(final, options.force)
    target_stages = TARGET_STAGES[options.target]
    if existing is None:
        return growth.Plan(growth.NEW, stages=target_stages, previous=final)
    identity = growth.export_identity(
        loaded.family,
        loaded.source(),
        loaded.num_classes,
        loaded.in_chans,
        preprocessing.to_dict(),
        options.batch,
        options.opset,
        options.simplifier,
    )
    found = growth.compare(existing, identity)
    if not found.same_model:
        if not options.force:
            growth.refuse_other_model(found, final)
        return growth.Plan(growth.REPLACE, existing, found.differences, stages=target_stages)
    if options.force:
        return growth.Plan(growth.REMAKE, existing, stages=target_stages)
    return _grow_plan(existing, options)


def _grow_plan(existing: Artifact, options: ExportOptions) -> growth.Plan:
    """GROW with the stages the target still needs, or UNCHANGED when it needs none."""
    for name in (ONNX_FILE, WEIGHTS_FILE):  # a grown artifact reuses them: they must be what was verified
        existing.require(name, f"remake it with `{export_command(existing)}`")
    target_stages = TARGET_STAGES[options.target]
    stages = tuple(stage for stage in target_stages if growth.stage_needed(existing, stage, options))
    kept = tuple(stage for stage in target_stages if stage not in stages)
    return growth.Plan(growth.GROW if stages else growth.UNCHANGED, existing, stages=stages, kept_stages=kept)


def _unchanged_result(final: Path, plan: growth.Plan) -> ExportResult:
    manifest = dict(plan.existing.manifest, artifact=str(final))
    return ExportResult(
        final, manifest, {}, [], mode=plan.mode, kept=plan.kept_names(), message=growth.unchanged_note(final, plan)
    )


def _run(
    options: ExportOptions, loaded: LoadedModel, preprocessing: Preprocessing, final: Path, plan: growth.Plan
) -> ExportResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    replacing = plan.mode in (growth.REPLACE, growth.REMAKE, growth.GROW)
    with staged_dir(final, options.force or replacing) as tmp, progress() as bar:
        task = bar.add_task(f"export {loaded.size}", total=5, status="torch.onnx")
        if plan.mode == growth.GROW:
            # the verified graph and weights are kept: copy the folder, skip the ONNX steps
            plan.carried = growth.carry_over(plan.existing.root, tmp, (MANIFEST_NAME,))
            manifest = growth.merged_manifest(plan.existing.manifest, None)
            bar.update(task, advance=4, status=f"kept {ONNX_FILE}")
            t = time.perf_counter()
        else:
            manifest, t = _export_graph(options, loaded, preprocessing, tmp, bar, task, timings)
            manifest = _with_kept_files(plan, manifest, tmp)
        artifact = Artifact(tmp, manifest, staged=True)
        ctx = ExportContext(options, loaded, preprocessing, artifact, final, bar)
        for stage in plan.stages:
            bar.update(task, total=bar.tasks[task].total + 1, status=f"{stage} export")
            _stage_function(stage)(ctx)
            t = _timed(timings, stage, t)
            bar.update(task, advance=1)
        timings["total"] = round(time.perf_counter() - started, 3)
        # a grown artifact keeps its export's own timings; the stages added now are recorded beside them
        grown = plan.mode == growth.GROW
        manifest.setdefault("timings_s", {}).update({k: v for k, v in timings.items() if not grown or k != "total"})
        artifact.save()
        bar.update(task, advance=1, status="done")
    result_manifest = dict(manifest, artifact=str(final))
    return ExportResult(
        final,
        result_manifest,
        timings,
        ctx.notes,
        ctx.exit_code,
        mode=plan.mode,
        kept=plan.kept_names(),
        message=" ".join(growth.plan_notes(final, plan)),
    )


def _timed(timings: dict[str, float], step: str, since: float) -> float:
    now = time.perf_counter()
    timings[step] = round(now - since, 3)
    return now


def _with_kept_files(plan: growth.Plan, manifest: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """After a fresh ONNX export into ``tmp``: bring over what the old folder held that this export keeps.

    Same model (--force): every file, as long as the new graph is byte-identical to the one they were made
    from. Another model: only what no mfdeploy command listed (the user's own files); the rest was made
    from the replaced model and goes with it.
    """
    if plan.existing is None:
        if final_dir_has_files(plan.previous):  # --force over a folder without a readable manifest
            layout = growth.layout_names(plan.previous)
            plan.dropped = layout
            plan.carried = growth.carry_over(plan.previous, tmp, tuple(layout) + growth.EXPORT_FILES)
        return manifest
    listed = set(plan.existing.manifest.get("files", {}))
    old_graph = plan.existing.manifest.get("files", {}).get(ONNX_FILE, {}).get("sha256")
    same_graph = plan.mode == growth.REMAKE and old_graph == manifest["files"][ONNX_FILE]["sha256"]
    if same_graph:
        plan.carried = growth.carry_over(plan.existing.root, tmp, growth.EXPORT_FILES)
        return growth.merged_manifest(plan.existing.manifest, manifest)
    plan.dropped = sorted(name for name in listed if name not in growth.EXPORT_FILES)
    skip = tuple(listed | set(growth.EXPORT_FILES) | {name.split("/")[0] for name in listed})
    plan.carried = growth.carry_over(plan.existing.root, tmp, skip)
    return manifest


def final_dir_has_files(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir() and any(folder.iterdir())


def _export_graph(
    options: ExportOptions,
    loaded: LoadedModel,
    preprocessing: Preprocessing,
    tmp: Path,
    bar: Any,
    task: Any,
    timings: dict[str, float],
) -> tuple[dict[str, Any], float]:
    """Export, simplify, check and verify the ONNX graph into ``tmp``; the manifest of the new artifact."""
    model = loaded.model
    imgsz = preprocessing.imgsz
    dynamic = options.batch is None
    batch_axis: int | str = onnx_export.BATCH_AXIS if dynamic else options.batch
    verify_batches = list(DYNAMIC_VERIFY_BATCHES) if dynamic else [options.batch]
    t = time.perf_counter()
    graph = onnx_export.torch_to_onnx(model, imgsz, options.batch, options.opset)
    pinned = 0
    if dynamic:
        graph, pinned = onnx_export.pin_reshape_shapes(graph)
    t = _timed(timings, "export", t)
    bar.update(task, advance=1, status=options.simplifier)
    graph = onnx_export.simplify(graph, options.simplifier)
    renamed = onnx_export.name_unscoped_nodes(graph)
    # after the simplifier, which re-infers shapes and loses the batch's name past each pinned reshape
    shaped = onnx_export.name_batch_axis(graph) if dynamic else 0
    t = _timed(timings, "simplify", t)
    bar.update(task, advance=1, status="checks")
    graph = onnx_export.finalize(
        graph,
        {
            "mfdeploy.family": loaded.family,
            "mfdeploy.size": loaded.size,
            "mfdeploy.num_classes": str(loaded.num_classes),
            "mfdeploy.imgsz": str(imgsz),
            "mfdeploy.preprocessing": preprocessing.to_dict(),
            "mfdeploy.weights": loaded.source(),
        },
    )
    report = check_graph(graph)
    if not report.ok:
        raise UserError("the exported graph breaks the deployment rules: " + "; ".join(report.violations))
    onnx.save_model(graph, str(tmp / ONNX_FILE))
    t = _timed(timings, "check", t)
    bar.update(task, advance=1, status="verify with ONNX Runtime")
    with TorchRunner(model, imgsz) as reference, OnnxRuntimeRunner(tmp / ONNX_FILE) as candidate:
        verification = verify_runner(
            reference, candidate, preprocessing, verify_batches, loaded.in_chans, options.atol, options.rtol
        )
    if not verification.passed:
        raise VerificationError(verification.failure_message())
    t = _timed(timings, "verify", t)
    bar.update(task, advance=1, status="manifest")

    complexity = measure(model, imgsz)
    save_checkpoint(
        model, tmp / WEIGHTS_FILE, {"family": loaded.family, "size": loaded.size, "num_classes": loaded.num_classes}
    )
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": utc_now(),
        "model": {
            "architecture": "Mobile-Former",
            "family": loaded.family,  # mfdeploy.model.families: seed (PaddleViT) or official (AAboys)
            "size": loaded.size,
            "num_classes": loaded.num_classes,
            "in_chans": loaded.in_chans,
            "imgsz": imgsz,
            "params": complexity.params,
            "madds": complexity.madds,
            "classes": loaded.metadata.get("classes"),
            # what `mfdeploy train` trained it on: the default data of calibrate, parity and eval
            "trained_on": trained_on_record(loaded.metadata.get("trained_on")),
            "source": loaded.source(),
            # the checkpoint file's format and what its trainer wrote (timm: epoch, arch, metric)
            "checkpoint": loaded.origin or None,
        },
        "preprocessing": preprocessing.to_dict(),
        "inputs": [TensorSpec(onnx_export.INPUT_NAME, (batch_axis, loaded.in_chans, imgsz, imgsz)).to_dict()],
        "outputs": [TensorSpec(onnx_export.OUTPUT_NAME, (batch_axis, loaded.num_classes)).to_dict()],
        "onnx": {
            "file": ONNX_FILE,
            "opset": report.opset,
            "exporter": onnx_export.EXPORTER,
            "simplifier": options.simplifier,
            "dynamic_batch": dynamic,
            "batch": options.batch,
            "pinned_reshapes": pinned,
            "renamed_nodes": renamed,
            "batch_named_shapes": shaped,
            "node_count": report.node_count,
            "max_rank": report.max_rank,
            "op_histogram": report.op_histogram,
            "checks": {
                "onnx_checker_full": True,
                "shape_inference": True,
                "default_domain_only": True,
                "no_control_flow": True,
                "max_rank_at_most_4": True,
            },
        },
        "verification": {"onnx": verification.to_dict()},
        "versions": library_versions(),
    }
    staged = Artifact(tmp, manifest, staged=True)
    for name in (ONNX_FILE, WEIGHTS_FILE):
        staged.record_file(name)
    t = _timed(timings, "manifest", t)
    return manifest, t
