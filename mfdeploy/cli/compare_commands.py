"""`mfdeploy parity` and `mfdeploy eval`: every backend against PyTorch, and accuracy on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mfdeploy.cli.app import app
from mfdeploy.cli.options import (
    ArtifactArgument,
    JsonOption,
    OptionalArtifactArgument,
    OutOption,
    ProviderOption,
    SizeOption,
    TargetsOption,
    batch_option,
    data_option,
    default,
)
from mfdeploy.cli.output import file_target, human, write_json
from mfdeploy.export.options import ExportOptions
from mfdeploy.parity.options import EVAL_BATCH, EVAL_DATA, EVAL_TARGETS, PARITY_DATA, ParityOptions


def _write_text(path: Optional[Path], text: str) -> None:
    if path is None:
        return
    from mfdeploy.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


@app.command()
def parity(
    artifact_dir: OptionalArtifactArgument = None,
    size: SizeOption = None,
    out: OutOption = default(ExportOptions, "out"),
    targets: TargetsOption = ",".join(default(ParityOptions, "targets")),
    data: data_option(
        "builtin (photographs), builtin-digits (its validation split), a folder of images, or a .npy/.npz "
        f"(default: the data the model was trained on, as its checkpoint recorded it, else {PARITY_DATA}).",
        optional=True,
    ) = None,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = default(ParityOptions, "n"),
    batch: batch_option("images per inference call") = default(ParityOptions, "batch"),
    layers: Annotated[
        bool, typer.Option("--layers", help="Compare stage by stage even when a backend passes.")
    ] = False,
    provider: ProviderOption = None,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Override: max abs error on logits.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option("--min-cosine", help="Override: min cosine.")] = None,
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Override: min top-1 agreement.")] = None,
    min_top5: Annotated[Optional[float], typer.Option("--min-top5", help="Override: min top-5 agreement.")] = None,
    stage_tol: Annotated[Optional[float], typer.Option("--stage-tol", help="Override: stage relative error.")] = None,
    json_target: JsonOption = None,
    md_path: Annotated[
        Optional[Path], typer.Option("--md", callback=file_target, help="Write a Markdown report here.")
    ] = None,
    html_path: Annotated[
        Optional[Path], typer.Option("--html", callback=file_target, help="Write an HTML report (with a plot).")
    ] = None,
) -> None:
    """Every backend against PyTorch on the same images, and where a failing one first parts from it."""
    from mfdeploy.export.workflow import artifact_for_targets
    from mfdeploy.parity import report as parity_report
    from mfdeploy.parity.harness import run_parity
    from mfdeploy.parity.options import check_options

    overrides = {
        "max_abs_error": atol,
        "min_cosine": min_cosine,
        "min_top1": min_top1,
        "min_top5": min_top5,
        "stage_rel_error": stage_tol,
    }
    options = ParityOptions(
        targets=targets.split(","),
        data=data,
        n=n,
        batch=default(ParityOptions, "batch") if batch is None else batch,
        layers=layers,
        provider=provider,
        overrides=overrides,
    )
    names = check_options(options)
    artifact = artifact_for_targets(artifact_dir, size, out, names)
    report = run_parity(artifact, options)
    write_json(report, json_target)
    _write_text(md_path, parity_report.markdown(report))
    _write_text(html_path, parity_report.html_report(report))
    say = human(json_target)
    for line in parity_report.terminal_lines(report):
        say.print(line, soft_wrap=True, markup=False, highlight=False)
    if not report["passed"]:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    artifact_dir: ArtifactArgument,
    data: data_option(
        "builtin-digits (its validation split), or an ImageFolder (class sub-folders) (default: the data the "
        f"model was trained on, its validation split, as its checkpoint recorded it, else {EVAL_DATA}).",
        optional=True,
    ) = None,
    targets: TargetsOption = ",".join(EVAL_TARGETS),
    batch: batch_option("images per inference call") = EVAL_BATCH,
    provider: ProviderOption = None,
    json_target: JsonOption = None,
) -> None:
    """Top-1 and top-5 accuracy per backend on labelled data, and agreement with FP32."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.images.choice import data_name
    from mfdeploy.parity.evaluate import run_eval

    batch = EVAL_BATCH if batch is None else batch
    report = run_eval(Artifact.open(artifact_dir), data, targets, batch, provider)
    write_json(report, json_target)
    say = human(json_target)
    skipped = report["data"].get("skipped_files") or 0
    skipped_note = f", {skipped} unreadable files skipped" if skipped else ""
    say.print(
        f"accuracy on {data_name(report['data'])} ({report['data']['images']} labelled images{skipped_note}):",
        markup=False,
        soft_wrap=True,
    )
    for row in report["results"]:
        if row["status"] == "skipped":
            say.print(f"  {row['target']:<10} skipped: {row['reason']}", soft_wrap=True, markup=False)
            continue
        say.print(
            f"  {row['target']:<10} {row['precision']:<5} top-1 {row['top1']:.2%}  top-5 {row['top5']:.2%}  "
            f"agrees with FP32 {row['agreement_with_fp32']:.2%}  ({row['delta_top1_points']:+.2f} points)",
            markup=False,
        )
    if report["untrained_note"]:
        say.print(f"note: {report['untrained_note']}", soft_wrap=True, markup=False)
