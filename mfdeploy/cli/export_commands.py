"""`mfdeploy export`, `verify`, `calibrate`, `build-engine` and `check`: making artifacts and proving them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mfdeploy import console
from mfdeploy.calibration.options import CalibrationOptions
from mfdeploy.cli.app import app
from mfdeploy.cli.options import (
    COREML,
    ArchOption,
    ArtifactArgument,
    AtolOption,
    CalibBatchOption,
    CalibDataOption,
    CalibSizeOption,
    EmaOption,
    Fp16NormOption,
    ImgszOption,
    Int8BaseOption,
    JsonOption,
    MaxBatchOption,
    MethodOption,
    MinBatchOption,
    NumClassesOption,
    OptBatchOption,
    OptionalArtifactArgument,
    OutOption,
    PercentileOption,
    ProviderOption,
    RtolOption,
    SeedOption,
    SelectOption,
    SizeOption,
    ThreadsOption,
    TimingCacheOption,
    WeightsOption,
    WorkspaceOption,
    batch_option,
    batches_option,
    default,
    given,
)
from mfdeploy.cli.output import human, write_json
from mfdeploy.cli.summaries import print_calibration_summary, print_export_summary
from mfdeploy.errors import UserError
from mfdeploy.export.coreml_options import CoreMLOptions
from mfdeploy.export.options import ExportOptions
from mfdeploy.export.tensorrt_build import EngineOptions

PROFILE_FLAGS = "--min-batch/--opt-batch/--max-batch"  # named together: they make one profile
TRT_FLAGS = {
    "calib_data": "--calib-data",
    "calib_size": "--calib-size",
    "calib_batch": "--calib-batch",
    "method": "--method",
    "select": "--select",
    "percentile": "--percentile",
    "fp16_norm": "--fp16-norm",
    "int8_base": "--int8-base",
    "min_batch": PROFILE_FLAGS,
    "opt_batch": PROFILE_FLAGS,
    "max_batch": PROFILE_FLAGS,
    "workspace": "--workspace",
    "timing_cache": "--timing-cache",
}
COREML_FLAGS = {
    "compress": "--compress",
    "batches": "--batches",
    "deployment_target": "--deployment-target",
    "image_input": "--image-input",
    "labels": "--labels",
}


def _calibration_options(
    calib_data, calib_size, calib_batch, method, select, percentile, fp16_norm, int8_base, **more
) -> CalibrationOptions:
    return CalibrationOptions(
        data=calib_data,
        num_images=calib_size,
        batch=calib_batch,
        method=method,
        select=select,
        percentile=percentile,
        keep_norms_fp32=not fp16_norm,
        int8_base=int8_base,
        **more,
    )


@app.command()
def export(
    ctx: typer.Context,
    size: SizeOption = None,
    target: Annotated[str, typer.Option("--target", help="onnx, trt, coreml or all.")] = default(
        ExportOptions, "target"
    ),
    imgsz: ImgszOption = None,
    batch: batch_option("a static batch (default: a dynamic batch axis)") = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch axis (the default).")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset, 17 or newer.")] = default(ExportOptions, "opset"),
    weights: WeightsOption = None,
    ema: EmaOption = False,
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
    seed: SeedOption = default(ExportOptions, "seed"),
    out: OutOption = default(ExportOptions, "out"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remake what this export makes (the graph and the target's parts; other files are kept), or "
            "replace a folder holding another model.",
        ),
    ] = False,
    simplifier: Annotated[str, typer.Option("--simplifier", help="onnxslim, onnxsim or none.")] = default(
        ExportOptions, "simplifier"
    ),
    atol: AtolOption = default(ExportOptions, "atol"),
    rtol: RtolOption = default(ExportOptions, "rtol"),
    precision: Annotated[
        Optional[str],
        typer.Option(
            "--precision",
            help=f"TensorRT: fp16, int8 or fp32 (default {EngineOptions.precision}). "
            f"Core ML: fp16 or fp32 (default {CoreMLOptions.precision}).",
        ),
    ] = None,
    calib_data: CalibDataOption = default(CalibrationOptions, "data"),
    calib_size: CalibSizeOption = default(CalibrationOptions, "num_images"),
    calib_batch: CalibBatchOption = default(CalibrationOptions, "batch"),
    method: MethodOption = default(CalibrationOptions, "method"),
    select: SelectOption = None,
    percentile: PercentileOption = default(CalibrationOptions, "percentile"),
    fp16_norm: Fp16NormOption = False,
    int8_base: Int8BaseOption = default(CalibrationOptions, "int8_base"),
    min_batch: MinBatchOption = None,
    opt_batch: OptBatchOption = None,
    max_batch: MaxBatchOption = None,
    workspace: WorkspaceOption = default(EngineOptions, "workspace_gib"),
    timing_cache: TimingCacheOption = None,
    compress: Annotated[
        str,
        typer.Option(
            "--compress", help="Weights: none, int8, palettize4, palettize6 or palettize8.", rich_help_panel=COREML
        ),
    ] = default(CoreMLOptions, "compress"),
    batches: batches_option("enumerated input shapes, e.g. 1,4,8", COREML) = None,
    deployment_target: Annotated[
        str,
        typer.Option("--deployment-target", help="Minimum target: iOS16, iOS17 or iOS18.", rich_help_panel=COREML),
    ] = default(CoreMLOptions, "deployment_target"),
    image_input: Annotated[
        bool,
        typer.Option("--image-input", help="An RGB image input (0-255), normalisation inside.", rich_help_panel=COREML),
    ] = False,
    labels: Annotated[
        Optional[Path],
        typer.Option("--labels", help="Class names, one per line; makes a classifier.", rich_help_panel=COREML),
    ] = None,
    json_target: JsonOption = None,
) -> None:
    """Export a verified artifact: custom-op-free ONNX checked against PyTorch on every run."""
    from mfdeploy.export.options import TARGET_STAGES
    from mfdeploy.export.pipeline import export as run_export
    from mfdeploy.export.tensorrt_build import engine_options
    from mfdeploy.export.tensorrt_stage import TensorRTOptions

    if batch is not None and dynamic_batch:
        raise UserError("pass either --batch N (static) or --dynamic-batch, not both")
    stages = TARGET_STAGES.get(target)  # None: an unknown target, refused by the export's own check
    _refuse_flags_without_stage(target, stages, "trt", "TensorRT", given(ctx, **TRT_FLAGS))
    _refuse_flags_without_stage(target, stages, "coreml", "Core ML", given(ctx, **COREML_FLAGS))
    if stages is not None and not {"trt", "coreml"} & set(stages):
        _refuse_flags_without_stage(target, stages, "trt", "TensorRT or Core ML", given(ctx, precision="--precision"))
    stage_options: dict[str, object] = {}
    if stages and "trt" in stages:
        calibration = _calibration_options(
            calib_data, calib_size, calib_batch, method, select, percentile, fp16_norm, int8_base
        )
        engine = engine_options(precision, batch, min_batch, opt_batch, max_batch, workspace, timing_cache)
        stage_options["trt"] = TensorRTOptions(calibration=calibration, engine=engine)
    if stages and "coreml" in stages:
        stage_options["coreml"] = CoreMLOptions.from_cli(
            precision, compress, batches, deployment_target, image_input, labels
        )
    options = ExportOptions(
        size=size,
        target=target,
        imgsz=imgsz,
        batch=batch,
        opset=opset,
        weights=str(weights) if weights else None,
        ema=ema,
        arch=arch,
        num_classes=num_classes,
        seed=seed,
        out=out,
        force=force,
        simplifier=simplifier,
        atol=atol,
        rtol=rtol,
        stage_options=stage_options,
        explicit=tuple(given(ctx, **TRT_FLAGS, **COREML_FLAGS, precision="--precision")),
    )
    result = run_export(options)
    write_json(
        dict(result.manifest, notes=result.notes, mode=result.mode, kept=result.kept, message=result.message),
        json_target,
    )
    print_export_summary(result, human(json_target))
    for note in result.notes:  # what the user must act on (engine not built, warnings): always on stderr
        console.err.print(note, soft_wrap=True, markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _refuse_flags_without_stage(
    target: str, stages: tuple[str, ...] | None, stage: str, what: str, used: list[str]
) -> None:
    """A flag for a stage the chosen --target does not run would be silently ignored: refuse it."""
    if used and stages is not None and stage not in stages:
        raise UserError(
            f"{', '.join(used)}: {what} options, not used by --target {target}; drop them or pick that target"
        )


@app.command()
def verify(
    artifact_dir: ArtifactArgument,
    provider: ProviderOption = None,
    atol: AtolOption = default(ExportOptions, "atol"),
    rtol: RtolOption = default(ExportOptions, "rtol"),
    threads: ThreadsOption = None,
    json_target: JsonOption = None,
) -> None:
    """Re-check an artifact: the manifest and every file it lists (unchanged), then its ONNX graph against its
    PyTorch model (logits equal)."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.verify import VerificationError, verify_artifact
    from mfdeploy.option_values import check_tolerances

    check_tolerances(atol, rtol)  # a bad limit is refused before the folder is read
    check = verify_artifact(Artifact.open(artifact_dir), provider, atol, threads, rtol)
    write_json(check.to_dict(), json_target)
    say = human(json_target)
    _print_file_checks(say, check.files)
    for warning in check.warnings:
        console.warn(warning)
    numbers = check.numbers
    for case in numbers.cases if numbers else []:
        mark = "ok  " if case.passed else "FAIL"
        say.print(
            f"{mark} {case.inputs:>6} batch {case.batch:>3}: max abs error {case.max_abs_error:.2e} on logits up to "
            f"{case.scale:.4g} (limit {case.limit:.3g}), top-1 agreement {case.top1_agreement:.1%}",
            soft_wrap=True,
            markup=False,
        )
    if check.skipped:
        say.print(check.skipped, soft_wrap=True, markup=False)
    if check.passed:
        say.print(
            f"{numbers.candidate} matches {numbers.reference} (limit {numbers.atol:g} + {numbers.rtol:g} x largest "
            "|logit| per case)",
            markup=False,
        )
    else:
        raise VerificationError(check.failure_message())


def _print_file_checks(say, files) -> None:
    """One line per file: its state and, when it is not intact, the command that writes it again."""
    width = max(len(f.name) for f in files)
    for f in files:
        line = f"{f.status:<11} {f.name:<{width}}"
        if f.failed:
            line += f"  remake: {f.remake}"
        say.print(line.rstrip(), soft_wrap=True, markup=False, highlight=False)


@app.command()
def calibrate(
    artifact_dir: OptionalArtifactArgument = None,
    size: SizeOption = None,
    weights: WeightsOption = None,
    ema: EmaOption = False,
    out: OutOption = default(ExportOptions, "out"),
    calib_data: CalibDataOption = default(CalibrationOptions, "data"),
    calib_size: CalibSizeOption = default(CalibrationOptions, "num_images"),
    calib_batch: CalibBatchOption = default(CalibrationOptions, "batch"),
    method: MethodOption = default(CalibrationOptions, "method"),
    select: SelectOption = None,
    percentile: PercentileOption = default(CalibrationOptions, "percentile"),
    precision: Annotated[str, typer.Option("--precision", help="Graphs to write: int8, fp16 or int8,fp16.")] = ",".join(
        default(CalibrationOptions, "precisions")
    ),
    fp16_norm: Fp16NormOption = False,
    int8_base: Int8BaseOption = default(CalibrationOptions, "int8_base"),
    threads: ThreadsOption = None,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the CPU latency measurement.")] = False,
    json_target: JsonOption = None,
) -> None:
    """INT8 (Q/DQ) and FP16 graphs for TensorRT from one FP32 run over calibration data, with a report; each INT8
    method's graph and report kept under calibration/<method>/, --method all compares the three."""
    from mfdeploy.calibration.options import check_options
    from mfdeploy.calibration.pipeline import calibrate_artifact
    from mfdeploy.export.workflow import open_or_export

    options = _calibration_options(
        calib_data,
        calib_size,
        calib_batch,
        method,
        select,
        percentile,
        fp16_norm,
        int8_base,
        precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
        threads=threads,
        measure_latency=not no_latency,
    )
    check_options(options)
    artifact = open_or_export(artifact_dir, size, out, weights, ema=ema)
    report = calibrate_artifact(artifact, options)
    write_json(report, json_target)
    print_calibration_summary(artifact, report, human(json_target))


@app.command("build-engine")
def build_engine_command(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder with its TensorRT-ready graph.")],
    precision: Annotated[str, typer.Option("--precision", help="fp16, int8 or fp32.")] = default(
        EngineOptions, "precision"
    ),
    batch: batch_option("a static profile") = None,
    min_batch: MinBatchOption = None,
    opt_batch: OptBatchOption = None,
    max_batch: MaxBatchOption = None,
    workspace: WorkspaceOption = default(EngineOptions, "workspace_gib"),
    timing_cache: TimingCacheOption = None,
    fp16_norm: Fp16NormOption = False,
    json_target: JsonOption = None,
) -> None:
    """Build a TensorRT engine from graphs already exported (e.g. on a GPU host after exporting elsewhere)."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.tensorrt_build import (
        EXIT_NO_TENSORRT,
        GRAPH_FOR_PRECISION,
        build_engine,
        gpu_host_instructions,
    )
    from mfdeploy.export.tensorrt_build import engine_options as make_engine_options
    from mfdeploy.export.tensorrt_stage import lint_or_fail
    from mfdeploy.fileio import display_path
    from mfdeploy.runtime.tensorrt_env import tensorrt_unavailable_reason

    if precision not in GRAPH_FOR_PRECISION:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(GRAPH_FOR_PRECISION)}")
    options = make_engine_options(precision, batch, min_batch, opt_batch, max_batch, workspace, timing_cache)
    artifact = Artifact.open(artifact_dir)
    lint = lint_or_fail(artifact, GRAPH_FOR_PRECISION[precision], fp16_norm)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UserError(
            f"TensorRT engine not built: {reason}. {display_path(artifact.path(GRAPH_FOR_PRECISION[precision]))} "
            f"passed the TensorRT {lint['tensorrt_version']} lint.\n"
            + "\n".join(gpu_host_instructions(artifact.root, artifact.manifest, options)),
            exit_code=EXIT_NO_TENSORRT,
        )
    entry = build_engine(artifact, options)
    write_json(entry, json_target)
    batches = f"{entry['profile']['min']}-{entry['profile']['max']}"
    human(json_target).print(
        f"built {display_path(artifact.path(entry['file']))} ({precision}, batch {batches}) in "
        f"{entry['build_seconds']:.1f} s "
        f"with TensorRT {entry['tensorrt_version']} on {entry['gpu_name']}",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def check(
    artifact_dir: ArtifactArgument,
    target: Annotated[str, typer.Option("--target", help="What to check readiness for: trt.")] = "trt",
    fp16_norm: Fp16NormOption = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Treat mfdeploy's policies (warnings) as errors too, not only TensorRT's rules."),
    ] = False,
    json_target: JsonOption = None,
) -> None:
    """Readiness lint, on the CPU: will TensorRT parse and build every graph of this artifact?

    Errors are TensorRT's rules (its ONNX parser or builder would reject or mis-handle the graph); warnings
    are mfdeploy's policies (our choices). Exits 1 on any error; with --strict, on any warning too."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.graph.tensorrt_lint import lint_artifact

    if target != "trt":
        raise UserError(f"unknown check target {target!r}; only trt is available")
    reports = lint_artifact(Artifact.open(artifact_dir), allow_fp16_norms=fp16_norm or None, strict=strict)
    if not reports:
        raise UserError(f"{artifact_dir} has no ONNX graph to check; export it first")
    write_json([r.to_dict() for r in reports], json_target)
    say = human(json_target)
    for report in reports:
        errors, warnings = len(report.problems), len(report.warnings)
        verdict = "ready" if report.ok else f"{errors} error(s)"
        if warnings:
            verdict += f", {warnings} policy warning(s)"
        say.print(f"{report.graph}: {report.nodes} nodes, TensorRT {report.tensorrt_version}: {verdict}", markup=False)
        for finding in sorted(report.findings, key=lambda f: not report.is_error(f)):
            say.print(f"  - {finding.label(strict)}: {finding.message}", soft_wrap=True, markup=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)
