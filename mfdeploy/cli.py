"""The `mfdeploy` command line. Each command is a thin shell over a library function.

User mistakes surface as UserError: one line on stderr, a non-zero exit, no traceback.
"""

from __future__ import annotations

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

JsonOption = Annotated[bool, typer.Option("--json", help="Write machine-readable JSON on stdout.")]
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
    from mfdeploy.model import SIZES, build_model, get_config
    from mfdeploy.model.complexity import measure
    from mfdeploy.preprocess import check_imgsz

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
    from mfdeploy.model import get_config
    from mfdeploy.preprocess import check_imgsz
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
        Optional[str], typer.Option("--precision", help="Compute precision; Core ML: fp16 (default) or fp32.")
    ] = None,
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
    from mfdeploy.export.pipeline import TARGET_STAGES, TARGETS, ExportOptions
    from mfdeploy.export.pipeline import export as run_export

    if batch is not None and dynamic_batch:
        raise UserError("pass either --batch N (static) or --dynamic-batch, not both")
    stage_options = {}
    coreml_flags = {
        "--compress": compress != "none",
        "--batches": batches is not None,
        "--deployment-target": deployment_target != "iOS16",
        "--image-input": image_input,
        "--labels": labels is not None,
    }
    if target in TARGETS and "coreml" in TARGET_STAGES[target]:
        from mfdeploy.export.coreml_export import CoreMLOptions

        stage_options["coreml"] = CoreMLOptions.from_cli(
            precision, compress, batches, deployment_target, image_input, labels
        )
    elif target in TARGETS and any(coreml_flags.values()):
        used = ", ".join(flag for flag, given in coreml_flags.items() if given)
        raise UserError(f"{used}: Core ML options; use them with --target coreml")
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
    try:
        app(args=argv, prog_name="mfdeploy")
    except UserError as exc:
        console.error(exc.message)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.error("interrupted")
        raise SystemExit(130) from None
