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
    ONNX_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    Artifact,
    artifact_dir_name,
    check_output_dir,
    staged_dir,
    utc_now,
)
from mfdeploy.console import progress
from mfdeploy.environment import library_versions
from mfdeploy.errors import UserError
from mfdeploy.export import onnx_export
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
    check_options(options)
    loaded = load_model(options.size, options.weights, options.num_classes, seed=options.seed)
    for stage in TARGET_STAGES[options.target]:
        # each stage refuses its bad options (and a missing library) before any export work
        stage_check = _stage_function(stage, "check_stage")
        if stage_check is not None:
            stage_check(options, loaded)
    model = loaded.model
    preprocessing = _preprocessing(loaded, options.imgsz)
    imgsz = preprocessing.imgsz
    final = Path(options.out) / artifact_dir_name(loaded.size)
    check_output_dir(final, options.force)

    dynamic = options.batch is None
    batch_axis: int | str = onnx_export.BATCH_AXIS if dynamic else options.batch
    verify_batches = list(DYNAMIC_VERIFY_BATCHES) if dynamic else [options.batch]
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(step: str, since: float) -> float:
        now = time.perf_counter()
        timings[step] = round(now - since, 3)
        return now

    with staged_dir(final, options.force) as tmp, progress() as bar:
        task = bar.add_task(f"export {loaded.size}", total=5, status="torch.onnx")
        t = time.perf_counter()
        graph = onnx_export.torch_to_onnx(model, imgsz, options.batch, options.opset)
        pinned = 0
        if dynamic:
            graph, pinned = onnx_export.pin_reshape_shapes(graph)
        t = timed("export", t)
        bar.update(task, advance=1, status=options.simplifier)
        graph = onnx_export.simplify(graph, options.simplifier)
        renamed = onnx_export.name_unscoped_nodes(graph)
        t = timed("simplify", t)
        bar.update(task, advance=1, status="checks")
        graph = onnx_export.finalize(
            graph,
            {
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
        t = timed("check", t)
        bar.update(task, advance=1, status="verify with ONNX Runtime")
        with TorchRunner(model, imgsz) as reference, OnnxRuntimeRunner(tmp / ONNX_FILE) as candidate:
            verification = verify_runner(
                reference, candidate, preprocessing, verify_batches, loaded.in_chans, options.atol, options.rtol
            )
        if not verification.passed:
            raise VerificationError(verification.failure_message())
        t = timed("verify", t)
        bar.update(task, advance=1, status="manifest")

        complexity = measure(model, imgsz)
        save_checkpoint(model, tmp / WEIGHTS_FILE, {"size": loaded.size, "num_classes": loaded.num_classes})
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created": utc_now(),
            "model": {
                "architecture": "Mobile-Former",
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
        artifact = Artifact(tmp, manifest, staged=True)
        for name in (ONNX_FILE, WEIGHTS_FILE):
            artifact.record_file(name)
        ctx = ExportContext(options, loaded, preprocessing, artifact, final, bar)
        for stage in TARGET_STAGES[options.target]:
            bar.update(task, total=bar.tasks[task].total + 1, status=f"{stage} export")
            _stage_function(stage)(ctx)
            t = timed(stage, t)
            bar.update(task, advance=1)
        timings["total"] = round(time.perf_counter() - started, 3)
        manifest["timings_s"] = timings
        artifact.save()
        bar.update(task, advance=1, status="done")
    result_manifest = dict(manifest, artifact=str(final))
    return ExportResult(final, result_manifest, timings, ctx.notes, ctx.exit_code)
