"""The `mfdeploy` command line. Each command is a thin shell over a library function.

User mistakes surface as UserError: one line on stderr, a non-zero exit, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mfdeploy import __version__, console
from mfdeploy.errors import UserError

app = typer.Typer(
    name="mfdeploy",
    help="Mobile-Former from PyTorch to TensorRT and Core ML, with proof at every step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The command line as the user typed it (main() records it; results keep it so a run can be repeated).
_INVOCATION: list[str] = []

JsonOption = Annotated[bool, typer.Option("--json", help="Write machine-readable JSON on stdout.")]
CalibDataOption = Annotated[
    str, typer.Option("--calib-data", help="builtin, a folder of images, or a preprocessed .npy/.npz.")
]
MinBatchOption = Annotated[Optional[int], typer.Option("--min-batch", help="TensorRT profile: smallest batch.")]
OptBatchOption = Annotated[Optional[int], typer.Option("--opt-batch", help="TensorRT profile: batch to tune for.")]
MaxBatchOption = Annotated[Optional[int], typer.Option("--max-batch", help="TensorRT profile: largest batch.")]
WorkspaceOption = Annotated[float, typer.Option("--workspace", help="TensorRT workspace pool limit, GiB.")]
TimingCacheOption = Annotated[
    Optional[Path], typer.Option("--timing-cache", help="TensorRT timing cache file, reused across builds.")
]
CalibSizeOption = Annotated[int, typer.Option("--calib-size", help="Calibration images.")]
CalibBatchOption = Annotated[int, typer.Option("--calib-batch", help="Batch size of the calibration run.")]
MethodOption = Annotated[str, typer.Option("--method", help="minmax, entropy or percentile.")]
PercentileOption = Annotated[float, typer.Option("--percentile", help="For --method percentile, in (0, 100].")]
Fp16NormOption = Annotated[
    bool, typer.Option("--fp16-norm", help="Allow LayerNorm/Softmax in FP16 (kept FP32 by default).")
]
SizeOption = Annotated[Optional[str], typer.Option("--size", help="Model size: 26m, 52m, 96m, 151m, 214m, 294m, 508m.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mfdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Mobile-Former from PyTorch to TensorRT and Core ML, with proof at every step."""


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f}M"


@app.command()
def info(
    size: SizeOption = None,
    all_sizes: Annotated[bool, typer.Option("--all", help="One table of all seven sizes.")] = False,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Input side (a multiple of 32).")] = 224,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classifier outputs.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Parameters and multiply-adds, per stage or for every size, next to the paper's figures."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.model import SIZES, build_model, get_config
    from mfdeploy.model.complexity import measure

    check_imgsz(imgsz)
    if all_sizes and size is not None:
        raise UserError("pass either --size or --all, not both")
    names = list(SIZES) if all_sizes else [get_config(size or "52m").name]
    results = [measure(build_model(name, num_classes), imgsz) for name in names]
    if as_json:
        console.emit_json([r.to_dict() for r in results] if all_sizes else results[0].to_dict())
        return
    scale_note = "" if imgsz == 224 else f" (paper figures are at 224x224; measured at {imgsz}x{imgsz})"
    if all_sizes:
        table = Table(title=f"Mobile-Former sizes at {imgsz}x{imgsz}, {num_classes} classes{scale_note}")
        for column in ("size", "params M", "paper", "diff", "MAdds M", "paper", "diff", "tokens", "heads", "top-1*"):
            table.add_column(column, justify="right", no_wrap=True)
        for r in results:
            table.add_row(
                r.size,
                f"{r.params / 1e6:.2f}",
                f"{r.paper_params / 1e6:.1f}",
                f"{r.params_vs_paper:+.1%}",
                f"{r.madds / 1e6:.1f}",
                f"{r.paper_madds / 1e6:.0f}",
                f"{r.madds_vs_paper:+.1%}",
                f"{r.num_tokens}x{r.token_dim}",
                str(r.num_heads),
                f"{r.paper_top1:.1f}",
            )
        console.out.print(table)
        console.out.print("* ImageNet top-1 reported by the paper. MAdds count conv, linear and matmul.")
        return
    r = results[0]
    table = Table(title=f"Mobile-Former {r.size} at {imgsz}x{imgsz}, {num_classes} classes{scale_note}")
    for column, justify in (("stage", "left"), ("output shape", "left"), ("params", "right"), ("MAdds", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for stage in r.stages:
        shapes = "  ".join("x".join(str(d) for d in shape) for shape in stage.output_shape)
        table.add_row(stage.name, shapes, f"{stage.params:,}", f"{stage.madds:,}")
    table.add_section()
    table.add_row("total", "", f"{r.params:,}", f"{r.madds:,}")
    console.out.print(table)
    console.out.print(
        f"params {_millions(r.params)} (paper {_millions(r.paper_params)}, {r.params_vs_paper:+.1%}); "
        f"MAdds {_millions(r.madds)} (paper {_millions(r.paper_madds)}, {r.madds_vs_paper:+.1%}); "
        f"tokens {r.num_tokens}x{r.token_dim}, {r.num_heads} heads; paper ImageNet top-1 {r.paper_top1:.1f}"
    )


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint to write (.safetensors or .pt).")],
    size: Annotated[str, typer.Option("--size", help="Model size.")] = "26m",
    data: Annotated[
        str, typer.Option("--data", help="builtin-digits, or an ImageFolder (one sub-folder per class).")
    ] = "builtin-digits",
    epochs: Annotated[int, typer.Option("--epochs")] = 10,
    imgsz: Annotated[int, typer.Option("--imgsz", help="Training resolution (a multiple of 32).")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, cosine schedule).")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed", help="Initialisation and shuffling seed.")] = 0,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Start from this checkpoint (same size) instead of random.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a Mobile-Former on labelled images (CPU), reporting validation accuracy every epoch."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.model import get_config
    from mfdeploy.training import TrainConfig
    from mfdeploy.training import train as run_training

    cfg = TrainConfig(
        size=get_config(size).name,
        data=data,
        epochs=epochs,
        imgsz=check_imgsz(imgsz),
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    result = run_training(cfg, out, init_weights=weights)
    if as_json:
        console.emit_json(result.to_dict())
        return
    console.out.print(
        f"wrote {result.out} ({result.size}, {len(result.classes)} classes): validation accuracy "
        f"{result.val_accuracy:.2%} on {result.num_val} images after {cfg.epochs} epochs, {result.seconds:.1f} s"
    )


@app.command()
def export(
    size: SizeOption = None,
    target: Annotated[str, typer.Option("--target", help="onnx, trt, coreml or all.")] = "onnx",
    imgsz: Annotated[
        Optional[int], typer.Option("--imgsz", help="Input side, a multiple of 32 (default: the checkpoint's, or 224).")
    ] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Static batch size (default: dynamic).")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Dynamic batch axis (the default).")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset, 17 or newer.")] = 17,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint (.safetensors/.pt).")] = None,
    num_classes: Annotated[
        Optional[int], typer.Option("--num-classes", help="Default: the checkpoint's, or 1000.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for random weights when no --weights.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder that receives mobileformer_<size>/.")] = Path("artifacts"),
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output folder.")] = False,
    simplifier: Annotated[str, typer.Option("--simplifier", help="onnxslim (default), onnxsim or none.")] = "onnxslim",
    precision: Annotated[
        Optional[str],
        typer.Option("--precision", help="TensorRT: fp16 (default), int8 or fp32. Core ML: fp16 (default) or fp32."),
    ] = None,
    calib_data: CalibDataOption = "builtin",
    calib_size: CalibSizeOption = 512,
    calib_batch: CalibBatchOption = 32,
    method: MethodOption = "minmax",
    percentile: PercentileOption = 99.99,
    fp16_norm: Fp16NormOption = False,
    min_batch: MinBatchOption = None,
    opt_batch: OptBatchOption = None,
    max_batch: MaxBatchOption = None,
    workspace: WorkspaceOption = 4.0,
    timing_cache: TimingCacheOption = None,
    compress: Annotated[
        str, typer.Option("--compress", help="Core ML weights: none, int8, palettize4, palettize6 or palettize8.")
    ] = "none",
    batches: Annotated[
        Optional[str], typer.Option("--batches", help="Core ML batch sizes (enumerated shapes), e.g. 1,4,8.")
    ] = None,
    deployment_target: Annotated[
        str, typer.Option("--deployment-target", help="Core ML minimum target: iOS16, iOS17 or iOS18.")
    ] = "iOS16",
    image_input: Annotated[
        bool, typer.Option("--image-input", help="Core ML: an RGB image input (0-255), normalisation inside.")
    ] = False,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Core ML: class names, one per line; makes a classifier.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Export a verified artifact: custom-op-free ONNX checked against PyTorch on every run."""
    from mfdeploy.export.pipeline import TARGET_STAGES, ExportOptions
    from mfdeploy.export.pipeline import export as run_export

    if batch is not None and dynamic_batch:
        raise UserError("pass either --batch N (static) or --dynamic-batch, not both")
    stages = TARGET_STAGES.get(target)  # None: an unknown target, refused by the export's own check
    trt_flags = {
        "--calib-data": calib_data != "builtin",
        "--calib-size": calib_size != 512,
        "--calib-batch": calib_batch != 32,
        "--method": method != "minmax",
        "--percentile": percentile != 99.99,
        "--fp16-norm": fp16_norm,
        "--min-batch/--opt-batch/--max-batch": any(v is not None for v in (min_batch, opt_batch, max_batch)),
        "--workspace": workspace != 4.0,
        "--timing-cache": timing_cache is not None,
    }
    coreml_flags = {
        "--compress": compress != "none",
        "--batches": batches is not None,
        "--deployment-target": deployment_target != "iOS16",
        "--image-input": image_input,
        "--labels": labels is not None,
    }
    _refuse_flags_without_stage(target, stages, "trt", "TensorRT", trt_flags)
    _refuse_flags_without_stage(target, stages, "coreml", "Core ML", coreml_flags)
    if precision is not None and stages is not None and not {"trt", "coreml"} & set(stages):
        _refuse_flags_without_stage(target, stages, "trt", "TensorRT or Core ML", {"--precision": True})
    stage_options: dict[str, object] = {}
    if stages and "trt" in stages:
        from mfdeploy.calibration.pipeline import CalibrationOptions
        from mfdeploy.export.tensorrt_stage import TensorRTOptions

        calibration = CalibrationOptions(
            data=calib_data,
            num_images=calib_size,
            batch=calib_batch,
            method=method,
            percentile=percentile,
            keep_norms_fp32=not fp16_norm,
        )
        engine = _engine_options(precision or "fp16", batch, min_batch, opt_batch, max_batch, workspace, timing_cache)
        stage_options["trt"] = TensorRTOptions(calibration=calibration, engine=engine)
    if stages and "coreml" in stages:
        from mfdeploy.export.coreml_export import CoreMLOptions

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
        num_classes=num_classes,
        seed=seed,
        out=out,
        force=force,
        simplifier=simplifier,
        stage_options=stage_options,
    )
    result = run_export(options)
    if as_json:
        console.emit_json(dict(result.manifest, notes=result.notes))
    else:
        _print_export_summary(result)
    for note in result.notes:
        console.err.print(note, soft_wrap=True, markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _refuse_flags_without_stage(
    target: str, stages: tuple[str, ...] | None, stage: str, what: str, flags: dict[str, bool]
) -> None:
    """A flag for a stage the chosen --target does not run would be silently ignored: refuse it."""
    used = [flag for flag, given in flags.items() if given]
    if used and stages is not None and stage not in stages:
        raise UserError(
            f"{', '.join(used)}: {what} options, not used by --target {target}; drop them or pick that target"
        )


@app.command()
def verify(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder written by `mfdeploy export`.")],
    provider: Annotated[str, typer.Option("--provider", help="ONNX Runtime provider: cpu, cuda or tensorrt.")] = "cpu",
    atol: Annotated[float, typer.Option("--atol", help="Largest allowed abs error on logits.")] = 1e-4,
    threads: Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check an artifact's ONNX graph against its PyTorch model (files unchanged, logits equal)."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.verify import VerificationError, verify_artifact

    report = verify_artifact(Artifact.open(artifact_dir), provider, atol, threads)
    if as_json:
        console.emit_json(report.to_dict())
    else:
        for case in report.cases:
            mark = "ok  " if case.passed else "FAIL"
            console.out.print(
                f"{mark} {case.inputs:>6} batch {case.batch:>3}: max abs error {case.max_abs_error:.2e}, "
                f"top-1 agreement {case.top1_agreement:.1%}",
                soft_wrap=True,
            )
        if report.passed:
            console.out.print(f"{report.candidate} matches {report.reference} (limit {report.atol:.0e})")
    if not report.passed:
        raise VerificationError(report.failure_message())


@app.command()
def calibrate(
    artifact_dir: Annotated[Optional[Path], typer.Argument(help="An artifact folder (or use --size).")] = None,
    size: SizeOption = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="With --size: the checkpoint.")] = None,
    out: Annotated[Path, typer.Option("--out", help="With --size: where the artifact is (or goes).")] = Path(
        "artifacts"
    ),
    calib_data: CalibDataOption = "builtin",
    calib_size: CalibSizeOption = 512,
    calib_batch: CalibBatchOption = 32,
    method: MethodOption = "minmax",
    percentile: PercentileOption = 99.99,
    precision: Annotated[str, typer.Option("--precision", help="Graphs to write: int8, fp16 or int8,fp16.")] = (
        "int8,fp16"
    ),
    fp16_norm: Fp16NormOption = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op threads.")] = None,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the CPU latency measurement.")] = False,
    as_json: JsonOption = False,
) -> None:
    """INT8 (Q/DQ) and FP16 graphs for TensorRT from one FP32 run over calibration data, with a report."""
    from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact, check_options

    options = CalibrationOptions(
        data=calib_data,
        num_images=calib_size,
        batch=calib_batch,
        method=method,
        percentile=percentile,
        precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
        keep_norms_fp32=not fp16_norm,
        threads=threads,
        measure_latency=not no_latency,
    )
    check_options(options)
    artifact = _open_or_export(artifact_dir, size, out, weights)
    report = calibrate_artifact(artifact, options)
    if as_json:
        console.emit_json(report)
        return
    _print_calibration_summary(artifact, report)


def _print_calibration_summary(artifact, report) -> None:
    def say(text: str) -> None:
        console.out.print(text, soft_wrap=True, markup=False)

    data, stats = report["data"], report["stats"]
    reused = (
        "reused cached statistics" if stats["reused"] else f"collected statistics in {stats['collect_seconds']:.1f} s"
    )
    say(
        f"calibrated Mobile-Former {artifact.size} with {report['method']}"
        + (f" {report['percentile']}" if report.get("percentile") else "")
        + f" on {data['images']} images from {data['source']} ({reused})"
    )
    for precision, entry in report["evaluation"]["graphs"].items():
        m = entry["vs_fp32"]
        extra = ""
        if precision == "fp16":
            extra = f", {len(report['fp16']['fp32_islands'])} FP32 islands"
        if precision == "int8":
            extra = f", {report['int8']['quantized_nodes']} quantized ops"
        say(
            f"  {artifact.path(report[precision]['file'])}: vs FP32 on {m['samples']} held-out images "
            f"cosine {m['cosine']:.5f}, max abs error {m['max_abs_error']:.3g}, top-1 {m['top1_agreement']:.1%}, "
            f"top-5 {m['top5_agreement']:.1%}{extra}"
        )
        if "cpu_slower_than_fp32" in entry:
            say(f"  note: {precision} is slower than FP32 on this CPU: {entry['cpu_slower_than_fp32']['why']}")
    latency = report["evaluation"].get("ort_cpu_latency_ms")
    if latency:
        say(
            "  ONNX Runtime CPU median latency: "
            + "; ".join(
                f"{p} " + "/".join(f"{v:.2f}" for v in values.values()) + " ms (b1/b8)" for p, values in latency.items()
            )
        )
    say(f"  report: {artifact.path('calibration.md')} and calibration.json ({report['seconds']:.1f} s)")


def _engine_options(precision, batch, min_batch, opt_batch, max_batch, workspace, timing_cache):
    from mfdeploy.export.tensorrt_build import BatchProfile, EngineOptions

    given = [v for v in (min_batch, opt_batch, max_batch) if v is not None]
    if batch is not None and given:
        raise UserError("pass either --batch N or --min-batch/--opt-batch/--max-batch, not both")
    profile = None
    if batch is not None:
        profile = BatchProfile.static(batch) if batch >= 1 else None
    elif given:
        low = min_batch or 1
        high = max_batch or max(given)
        profile = BatchProfile(low, opt_batch or high, high).check()
    return EngineOptions(precision=precision, profile=profile, workspace_gib=workspace, timing_cache=timing_cache)


@app.command("build-engine")
def build_engine_command(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder with its TensorRT-ready graph.")],
    precision: Annotated[str, typer.Option("--precision", help="fp16, int8 or fp32.")] = "fp16",
    batch: Annotated[Optional[int], typer.Option("--batch", help="A static batch profile.")] = None,
    min_batch: MinBatchOption = None,
    opt_batch: OptBatchOption = None,
    max_batch: MaxBatchOption = None,
    workspace: WorkspaceOption = 4.0,
    timing_cache: TimingCacheOption = None,
    fp16_norm: Fp16NormOption = False,
    as_json: JsonOption = False,
) -> None:
    """Build a TensorRT engine from graphs already exported (e.g. on a GPU host after exporting elsewhere)."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.tensorrt_build import EXIT_NO_TENSORRT, GRAPH_FOR_PRECISION, build_command, build_engine
    from mfdeploy.export.tensorrt_stage import lint_or_fail
    from mfdeploy.runtime.tensorrt_env import tensorrt_unavailable_reason

    if precision not in GRAPH_FOR_PRECISION:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(GRAPH_FOR_PRECISION)}")
    options = _engine_options(precision, batch, min_batch, opt_batch, max_batch, workspace, timing_cache)
    artifact = Artifact.open(artifact_dir)
    lint = lint_or_fail(artifact, GRAPH_FOR_PRECISION[precision], fp16_norm)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise UserError(
            f"TensorRT engine not built: {reason}. {artifact.path(GRAPH_FOR_PRECISION[precision])} passed the "
            f"TensorRT {lint['tensorrt_version']} lint; run `{build_command(artifact.root, options)}` on a GPU host "
            "with TensorRT 10 or 11",
            exit_code=EXIT_NO_TENSORRT,
        )
    entry = build_engine(artifact, options)
    if as_json:
        console.emit_json(entry)
        return
    batches = f"{entry['profile']['min']}-{entry['profile']['max']}"
    console.out.print(
        f"built {artifact.path(entry['file'])} ({precision}, batch {batches}) in {entry['build_seconds']:.1f} s "
        f"with TensorRT {entry['tensorrt_version']} on {entry['gpu_name']}",
        soft_wrap=True,
    )


@app.command()
def check(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder.")],
    target: Annotated[str, typer.Option("--target", help="What to check readiness for: trt.")] = "trt",
    fp16_norm: Fp16NormOption = False,
    as_json: JsonOption = False,
) -> None:
    """Readiness lint, on the CPU: will TensorRT parse and build every graph of this artifact?"""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.graph.tensorrt_lint import lint_artifact

    if target != "trt":
        raise UserError(f"unknown check target {target!r}; only trt is available")
    reports = lint_artifact(Artifact.open(artifact_dir), allow_fp16_norms=fp16_norm or None)
    if not reports:
        raise UserError(f"{artifact_dir} has no ONNX graph to check; export it first")
    if as_json:
        console.emit_json([r.to_dict() for r in reports])
    else:
        for report in reports:
            verdict = "ready" if report.ok else f"{len(report.problems)} problem(s)"
            console.out.print(f"{report.graph}: {report.nodes} nodes, TensorRT {report.tensorrt_version}: {verdict}")
            for problem in report.problems:
                console.out.print(f"  - {problem}", soft_wrap=True, markup=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def _open_or_export(
    artifact_dir: Optional[Path], size: Optional[str], out: Path, weights: Optional[Path] = None, target: str = "onnx"
):
    """The artifact folder given, or <out>/mobileformer_<size> when it exists (and no --weights asks for a
    new one), else a fresh export of ``target`` there."""
    from mfdeploy.artifacts import Artifact, artifact_dir_name
    from mfdeploy.model import get_config

    if artifact_dir is not None:
        if size is not None or weights is not None:
            given = "--size" if size is not None else "--weights"
            raise UserError(f"pass either an artifact folder or {given}, not both")
        return Artifact.open(artifact_dir)
    root = out / artifact_dir_name(get_config(size or "52m").name)
    if weights is not None or not (root / "manifest.json").exists():
        from mfdeploy.export.pipeline import ExportOptions, export

        options = ExportOptions(size=size, weights=str(weights) if weights else None, target=target, out=out)
        root = export(options).artifact
    return Artifact.open(root)


def _artifact_for(artifact_dir: Optional[Path], size: Optional[str], out: Path, targets: list[str]):
    """The artifact a report runs on, exported (with --size) and calibrated first when it or the precision
    graphs the targets need are missing."""
    from mfdeploy.runtime.coreml_env import coremltools_installed

    # the Core ML package can only be made by an export; without coremltools the target is skipped
    target = "coreml" if "coreml" in targets and coremltools_installed() else "onnx"
    return _with_precision_graphs(_open_or_export(artifact_dir, size, out, target=target), targets)


def _with_precision_graphs(artifact, targets: list[str]):
    """Calibrate (built-in data, defaults) the INT8/FP16 graphs that ``targets`` need and ``artifact`` lacks."""
    wanted = tuple(p for p in ("int8", "fp16") if f"onnx-{p}" in targets)
    missing = tuple(p for p in wanted if f"model.{p}.onnx" not in artifact.manifest.get("files", {}))
    if missing:
        from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact

        calibrate_artifact(artifact, CalibrationOptions(precisions=missing, measure_latency=False))
    return artifact


def _write_text(path: Optional[Path], text: str) -> None:
    if path is None:
        return
    from mfdeploy.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


@app.command()
def parity(
    artifact_dir: Annotated[Optional[Path], typer.Argument(help="An artifact folder (or use --size).")] = None,
    size: SizeOption = None,
    out: Annotated[Path, typer.Option("--out", help="With --size: where the artifact is (or goes).")] = Path(
        "artifacts"
    ),
    targets: Annotated[
        str, typer.Option("--targets", help="Comma-separated targets; any that cannot run here is skipped.")
    ] = "onnx,onnx-fp16,onnx-int8,coreml,trt-fp16,trt-int8",
    data: Annotated[str, typer.Option("--data", help="builtin, a folder of images, or a .npy/.npz.")] = "builtin",
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 64,
    batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = 8,
    layers: Annotated[
        bool, typer.Option("--layers", help="Compare stage by stage even when a backend passes.")
    ] = False,
    provider: Annotated[str, typer.Option("--provider", help="ONNX Runtime provider: cpu, cuda, tensorrt.")] = "cpu",
    atol: Annotated[Optional[float], typer.Option("--atol", help="Override: max abs error on logits.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Override: min cosine.")] = None,
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Override: min top-1 agreement.")] = None,
    min_top5: Annotated[Optional[float], typer.Option("--min-top5", help="Override: min top-5 agreement.")] = None,
    stage_tol: Annotated[Optional[float], typer.Option("--stage-tol", help="Override: stage relative error.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write a Markdown report here.")] = None,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Write an HTML report (with a plot).")] = None,
) -> None:
    """Every backend against PyTorch on the same images, and where a failing one first parts from it."""
    import json

    from mfdeploy.parity import report as parity_report
    from mfdeploy.parity.harness import ParityOptions, check_options, run_parity

    overrides = {
        "max_abs_error": atol,
        "min_cosine": min_cosine,
        "min_top1": min_top1,
        "min_top5": min_top5,
        "stage_rel_error": stage_tol,
    }
    options = ParityOptions(
        targets=targets.split(","), data=data, n=n, batch=batch, layers=layers, provider=provider, overrides=overrides
    )
    names = check_options(options)
    artifact = _artifact_for(artifact_dir, size, out, names)
    report = run_parity(artifact, options)
    _write_text(json_path, json.dumps(report, indent=2) + "\n")
    _write_text(md_path, parity_report.markdown(report))
    _write_text(html_path, parity_report.html_report(report))
    for line in parity_report.terminal_lines(report):
        console.out.print(line, soft_wrap=True, markup=False, highlight=False)
    if not report["passed"]:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    artifact_dir: Annotated[Path, typer.Argument(help="An artifact folder.")],
    data: Annotated[str, typer.Option("--data", help="builtin-digits, or an ImageFolder (class sub-folders).")] = (
        "builtin-digits"
    ),
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated targets.")] = "onnx,onnx-fp16,onnx-int8",
    batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = 32,
    provider: Annotated[str, typer.Option("--provider", help="ONNX Runtime provider: cpu, cuda, tensorrt.")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")] = None,
) -> None:
    """Top-1 and top-5 accuracy per backend on labelled data, and agreement with FP32."""
    import json

    from mfdeploy.artifacts import Artifact
    from mfdeploy.parity.evaluate import run_eval

    report = run_eval(Artifact.open(artifact_dir), data, targets, batch, provider)
    _write_text(json_path, json.dumps(report, indent=2) + "\n")
    console.out.print(f"accuracy on {report['data']['source']} ({report['data']['images']} labelled images):")
    for row in report["results"]:
        if row["status"] == "skipped":
            console.out.print(f"  {row['target']:<10} skipped: {row['reason']}", soft_wrap=True, markup=False)
            continue
        console.out.print(
            f"  {row['target']:<10} {row['precision']:<5} top-1 {row['top1']:.2%}  top-5 {row['top5']:.2%}  "
            f"agrees with FP32 {row['agreement_with_fp32']:.2%}  ({row['delta_top1_points']:+.2f} points)",
            markup=False,
        )


@app.command()
def bench(
    artifact_dir: Annotated[
        Optional[Path], typer.Argument(help="An artifact folder from `mfdeploy export` (or use --size).")
    ] = None,
    size: Annotated[
        Optional[str],
        typer.Option(
            "--size",
            help="Export (and calibrate, for onnx-fp16/int8) this size in a temporary folder, then measure it.",
        ),
    ] = None,
    imgsz: Annotated[Optional[int], typer.Option("--imgsz", help="With --size: input side (default 224).")] = None,
    targets: Annotated[
        Optional[str],
        typer.Option("--targets", help="Comma-separated targets (default: all); any that cannot run here is skipped."),
    ] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, e.g. 1,8,32.")] = "1",
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op and torch threads (default: theirs).")
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before timing.")] = 20,
    runs: Annotated[
        Optional[int], typer.Option("--runs", help="Timed runs per target and batch (default 200).")
    ] = None,
    min_time: Annotated[
        Optional[float], typer.Option("--min-time", help="Instead of --runs: time for at least this many seconds.")
    ] = None,
    provider: Annotated[
        Optional[str], typer.Option("--provider", help="ONNX Runtime provider for onnx targets: cpu, cuda, tensorrt.")
    ] = None,
    compute_units: Annotated[
        Optional[str], typer.Option("--compute-units", help="Core ML: ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE.")
    ] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Per-layer profile, mapped to model stages.")] = False,
    top: Annotated[int, typer.Option("--top", help="With --profile: how many layers to list.")] = 10,
    device_name: Annotated[
        Optional[str], typer.Option("--device-name", help="How reports name this device (default: CPU/GPU model).")
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the result file here ('-' for stdout).")
    ] = None,
) -> None:
    """Measure latency, throughput, load time and memory of every target on this host."""
    import tempfile

    from mfdeploy.artifacts import Artifact
    from mfdeploy.benchmark.bench import BenchOptions, check_compute_units, command_line, parse_batches, run_bench
    from mfdeploy.benchmark.latency import TimingPlan
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.runtime.onnxruntime_runner import PROVIDERS
    from mfdeploy.runtime.registry import TARGETS, parse_targets

    if (artifact_dir is None) == (size is None):
        raise UserError("give an artifact folder or --size (to export one for this run), not both and not neither")
    if imgsz is not None and size is None:
        raise UserError("--imgsz applies to --size only; an artifact folder has its own image size")
    target_names = parse_targets(targets) if targets is not None else list(TARGETS)
    batches = parse_batches(batch)
    if runs is not None and min_time is not None:
        raise UserError("pass either --runs N or --min-time SECONDS, not both")
    if runs is not None and runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    if min_time is not None and not min_time > 0:
        raise UserError(f"--min-time must be a positive number of seconds, got {min_time}")
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if provider is not None and provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if json_out is not None and str(json_out) != "-" and json_out.is_dir():
        raise UserError(f"--json {json_out} is a folder; give a file name such as {json_out / 'bench.json'}")
    if imgsz is not None:
        check_imgsz(imgsz)
    plan = TimingPlan(warmup=warmup, runs=None if min_time is not None else (runs or 200), min_time_s=min_time)
    options = BenchOptions(
        artifact=Path(artifact_dir) if artifact_dir else Path(),
        targets=target_names,
        batches=batches,
        plan=plan,
        threads=threads,
        provider=provider,
        compute_units=check_compute_units(compute_units),
        profile=profile,
        top=top,
        device_name=device_name,
        command=command_line(_INVOCATION or None),
    )
    if artifact_dir is not None:
        Artifact.open(artifact_dir)  # a bad folder is reported now, not after the first cell
        document = _run_bench_with_progress(run_bench, options)
    else:
        from mfdeploy.export.pipeline import ExportOptions
        from mfdeploy.export.pipeline import export as run_export

        with tempfile.TemporaryDirectory(prefix="mfdeploy-bench-export-") as tmp:
            exported = run_export(ExportOptions(size=size, imgsz=imgsz, out=Path(tmp)))
            _with_precision_graphs(Artifact.open(exported.artifact), target_names)
            options.artifact = exported.artifact
            options.temporary_artifact = True
            document = _run_bench_with_progress(run_bench, options)
    _finish_bench(document, json_out)


def _run_bench_with_progress(run_bench, options):
    cells = len(options.targets) * len(options.batches)
    with console.progress() as bar:
        task = bar.add_task("bench", total=cells, status="")

        def on_cell(target: str, batch: int, entry) -> None:
            if entry is None:
                bar.update(task, status=f"{target} batch {batch}")
            else:
                bar.update(task, advance=1)

        document = run_bench(options, on_cell)
        bar.update(task, completed=cells, status="done")
    return document


def _finish_bench(document: dict, json_out: Optional[Path]) -> None:
    import json

    from mfdeploy.benchmark.report import document_rows
    from mfdeploy.fileio import atomic_path

    to_stdout = json_out is not None and str(json_out) == "-"
    target_console = console.err if to_stdout else console.out
    _print_rows(target_console, document_rows(document, "this run"), title=f"{document['device']}")
    for skip in document["skipped"]:
        what = "FAILED" if skip["kind"] == "failed" else "skipped"
        console.err.print(
            f"{what} {skip['target']} (batch {','.join(map(str, skip['batches']))}): {skip['reason']}",
            soft_wrap=True,
            markup=False,
        )
    for entry in document["results"]:
        if entry.get("profile"):
            _print_profile(target_console, entry)
    for warning in document["warnings"]:
        console.warn(warning)
    if to_stdout:
        console.emit_json(document)
    elif json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(document, indent=1) + "\n")
        console.err.print(f"wrote {json_out}", soft_wrap=True, markup=False)
    failed = [s for s in document["skipped"] if s["kind"] == "failed"]
    if failed or not document["results"]:
        raise typer.Exit(3)


def _print_rows(target_console, rows, title: str) -> None:
    """A terminal-width table of measured cells (the reports carry every column)."""
    from mfdeploy.benchmark.report import terminal_cells

    if not rows:
        target_console.print("nothing was measured", soft_wrap=True)
        return
    header, body, footnotes = terminal_cells(rows)
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="left" if column in ("device", "model", "target", "notes") else "right")
    for cells in body:
        table.add_row(*cells)
    target_console.print(table)
    for line in footnotes:
        target_console.print(line, soft_wrap=True, markup=False)


def _print_profile(target_console, entry: dict) -> None:
    profile = entry["profile"]
    if not profile.get("available"):
        target_console.print(f"{entry['target']} batch {entry['batch']}: {profile.get('note')}", markup=False)
        return
    unit = "ms" if profile["metric"] == "time_ms" else "est. cost"
    stages = ", ".join(f"{s['stage']} {s['share']:.0%}" for s in profile["stages"])
    target_console.print(
        f"{entry['target']} batch {entry['batch']} per-layer profile ({profile['source']}, {profile['runs']} runs, "
        f"{profile['mapped_share']:.0%} mapped to stages): {stages}",
        soft_wrap=True,
        markup=False,
    )
    for layer in profile["top_layers"]:
        target_console.print(
            f"  {layer['value']:.4g} {unit} {layer['share']:6.1%}  {layer['stage']:<15} {layer.get('op') or '-':<18} "
            f"{layer['name']}",
            soft_wrap=True,
            markup=False,
        )


@app.command()
def report(
    files: Annotated[list[Path], typer.Argument(help="Result files from `mfdeploy bench --json`, any devices.")],
    md: Annotated[Optional[Path], typer.Option("--md", help="Write Markdown here (chart PNGs beside it).")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write one self-contained HTML file here.")] = None,
) -> None:
    """Merge bench results from several devices into one table with charts."""
    from mfdeploy.benchmark.report import write_report

    for path in (md, html):
        if path is not None and path.is_dir():
            raise UserError(f"{path} is a folder; give a file name such as {path / 'report.md'}")
    output = write_report(files, md=md, html_path=html)
    merged = output.merged
    _print_rows(console.out, merged.rows, title=f"{len(merged.files)} result file(s)")
    for skip in merged.skipped:
        console.err.print(
            f"{skip['device']}: {skip['kind']} {skip['target']} ({skip['model']}): {skip['reason']}",
            soft_wrap=True,
            markup=False,
        )
    for path in output.written:
        console.err.print(f"wrote {path}", soft_wrap=True, markup=False)


def _print_export_summary(result) -> None:
    m = result.manifest

    def say(text: str) -> None:
        console.out.print(text, soft_wrap=True)

    graph, model, verification = m["onnx"], m["model"], m["verification"]["onnx"]
    source = model["source"]
    weights = f"random weights, seed {source['seed']}" if source["weights"] == "random" else source["weights"]
    batch = "dynamic batch" if graph["dynamic_batch"] else f"batch {graph['batch']}"
    say(f"exported Mobile-Former {model['size']} ({weights}) to {result.artifact / graph['file']}")
    say(
        f"  graph: opset {graph['opset']}, {graph['node_count']} nodes, {batch}, {m['preprocessing']['imgsz']}px, "
        f"simplified with {graph['simplifier']}; default domain only, no Loop/If/Scan, max rank {graph['max_rank']}"
    )
    ops = ", ".join(f"{op} {n}" for op, n in graph["op_histogram"].items())
    say(f"  ops: {ops}")
    cases = verification["cases"]
    kinds = sorted({c["inputs"] for c in cases})
    batches = "/".join(str(b) for b in sorted({c["batch"] for c in cases}))
    say(
        f"  verified against PyTorch with {verification['candidate']}: {' and '.join(kinds)} at batch {batches}, "
        f"max abs error {verification['worst_max_abs_error']:.2e} (limit {verification['atol']:.0e}), top-1 identical"
    )
    t = result.timings
    say(f"  took {t['total']:.1f} s (export {t['export']:.1f}, simplify {t['simplify']:.1f}, verify {t['verify']:.1f})")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning UserError into one line and an exit code."""
    _INVOCATION[:] = ["mfdeploy", *(sys.argv[1:] if argv is None else argv)]
    try:
        app(args=argv, prog_name="mfdeploy")
    except UserError as exc:
        console.error(exc.message)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise SystemExit(130) from None
