"""`mfdeploy bench` and `mfdeploy report`: latency on this host, and reports merged across devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mfdeploy import console
from mfdeploy.benchmark.bench import DEFAULT_BATCHES, BenchOptions
from mfdeploy.cli.app import INVOCATION, app
from mfdeploy.cli.options import (
    ImgszOption,
    JsonOption,
    OptionalArtifactArgument,
    ProviderOption,
    SizeOption,
    ThreadsOption,
    batches_option,
    data_option,
    default,
)
from mfdeploy.cli.output import file_target, human, write_json
from mfdeploy.errors import UserError
from mfdeploy.runtime.timing import TimingPlan


@app.command()
def bench(
    artifact_dir: OptionalArtifactArgument = None,
    size: SizeOption = None,
    imgsz: ImgszOption = None,
    targets: Annotated[
        Optional[str],
        typer.Option("--targets", help="Comma-separated targets (default: all); any that cannot run here is skipped."),
    ] = None,
    batches: batches_option("each is measured, e.g. 1,8,32") = ",".join(map(str, DEFAULT_BATCHES)),
    threads: ThreadsOption = None,
    warmup: Annotated[
        Optional[int], typer.Option("--warmup", help=f"Untimed runs before timing (default {TimingPlan.warmup}).")
    ] = None,
    runs: Annotated[
        Optional[int], typer.Option("--runs", help=f"Timed runs per target and batch (default {TimingPlan.runs}).")
    ] = None,
    min_time: Annotated[
        Optional[float], typer.Option("--min-time", help="Instead of --runs: time for at least this many seconds.")
    ] = None,
    provider: ProviderOption = None,
    compute_units: Annotated[
        Optional[str], typer.Option("--compute-units", help="Core ML: ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE.")
    ] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Per-layer profile, mapped to model stages.")] = False,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="TensorRT targets: capture each batch's launch in a CUDA graph and time its replays "
            "(falls back to plain launches if capture fails; other targets ignore it, with a note).",
        ),
    ] = False,
    top: Annotated[int, typer.Option("--top", help="With --profile: how many layers to list.")] = default(
        BenchOptions, "top"
    ),
    device_name: Annotated[
        Optional[str], typer.Option("--device-name", help="How reports name this device (default: CPU/GPU model).")
    ] = None,
    data: data_option(
        "Labelled data (builtin-digits, or an ImageFolder): each target's top-1/top-5 accuracy too, as eval scores it."
    ) = None,
    json_target: JsonOption = None,
) -> None:
    """Measure latency, throughput, load time and memory of every target on this host.

    Give an artifact folder, or --size to export (and calibrate, for onnx-fp16/int8) one in a temporary
    folder that is removed afterwards. With --data, the table shows each target's accuracy too.
    """
    from mfdeploy.artifacts import Artifact
    from mfdeploy.benchmark.bench import check_options, command_line, load_data, run_bench, timing_plan
    from mfdeploy.export.workflow import temporary_artifact
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.option_values import parse_batches
    from mfdeploy.runtime.registry import TARGETS, parse_targets

    if (artifact_dir is None) == (size is None):
        raise UserError("give an artifact folder or --size (to export one for this run), not both and not neither")
    if imgsz is not None and size is None:
        raise UserError("--imgsz applies to --size only; an artifact folder has its own image size")
    options = BenchOptions(
        artifact=Path(artifact_dir) if artifact_dir else Path(),
        targets=parse_targets(targets) if targets is not None else list(TARGETS),
        batches=list(parse_batches(batches, "--batches") if batches else DEFAULT_BATCHES),
        plan=timing_plan(warmup, runs, min_time),
        threads=threads,
        provider=provider,
        compute_units=compute_units,
        profile=profile,
        top=top,
        device_name=device_name,
        command=command_line(INVOCATION or None),
        data=data,
        cuda_graphs=cuda_graphs,
    )
    check_options(options)
    if imgsz is not None:
        check_imgsz(imgsz)
    # labelled data is loaded (or refused, in one line) before the first cell, outside the progress bar
    if artifact_dir is not None:
        artifact = Artifact.open(artifact_dir)
        artifact.check_manifest()  # a bad folder is reported now, not after the first cell
        labelled = load_data(artifact, data) if data is not None else None
        document = _run_bench_with_progress(run_bench, options, labelled)
    else:
        labelled_data = _check_size_data(size, data) if data is not None else None
        with temporary_artifact(size, imgsz, options.targets) as artifact:
            options.artifact = artifact.root
            options.temporary_artifact = True
            labelled = load_data(artifact, data, labelled_data) if data is not None else None
            document = _run_bench_with_progress(run_bench, options, labelled)
    _finish_bench(document, json_target)


def _check_size_data(size: str, data: str):
    """--size with --data: refuse data the exported model cannot be scored on before exporting it. That
    model has random weights and the paper's class count, without class names."""
    from mfdeploy.images.datasets import load_labelled
    from mfdeploy.images.labelled import model_classes
    from mfdeploy.model.config import PAPER_NUM_CLASSES

    labelled_data = load_labelled(data)
    model_classes(labelled_data, data, None, PAPER_NUM_CLASSES, f"the {size} model that --size exports")
    return labelled_data


def _run_bench_with_progress(run_bench, options: BenchOptions, labelled=None) -> dict[str, Any]:
    steps = len(options.targets) * (len(options.batches) + (labelled is not None))
    with console.progress() as bar:
        task = bar.add_task("bench", total=steps, status="")

        def on_cell(target: str, batch: int, entry) -> None:
            if entry is None:
                bar.update(task, status=f"{target} batch {batch}")
            else:
                bar.update(task, advance=1)

        def on_accuracy(target: str, entry) -> None:
            if entry is None:
                bar.update(task, status=f"{target} accuracy")
            else:
                bar.update(task, advance=1)

        document = run_bench(options, on_cell, labelled, on_accuracy)
        bar.update(task, completed=steps, status="done")
    return document


def _finish_bench(document: dict, json_target: Optional[str]) -> None:
    from mfdeploy.benchmark.report import document_rows

    write_json(document, json_target)  # first: the measurements are kept whatever printing them meets
    say = human(json_target)
    print_rows(say, document_rows(document, "this run"), title=f"{document['device']}")
    for skip in document["skipped"]:
        what = "FAILED" if skip["kind"] == "failed" else "skipped"
        console.err.print(
            f"{what} {skip['target']} (batch {','.join(map(str, skip['batches']))}): {skip['reason']}",
            soft_wrap=True,
            markup=False,
        )
    for entry in document["results"]:
        if entry.get("profile"):
            _print_profile(say, entry)
    for warning in document["warnings"]:
        console.warn(warning)
    accuracy = document.get("accuracy") or {}
    for entry in accuracy.get("results", []):
        if entry["status"] == "skipped":
            console.err.print(f"no accuracy for {entry['target']}: {entry['reason']}", soft_wrap=True, markup=False)
    failed = [s for s in document["skipped"] if s["kind"] == "failed"]
    failed += [a for a in accuracy.get("results", []) if a["status"] == "failed"]
    if failed or not document["results"]:
        raise typer.Exit(3)


def print_rows(target_console: Console, rows, title: str) -> None:
    """A terminal-width table of measured cells (the reports carry every column)."""
    from mfdeploy.benchmark.report import terminal_cells

    if not rows:
        target_console.print("nothing was measured", soft_wrap=True)
        return
    header, body, footnotes = terminal_cells(rows)
    # Text, not str: device names, labels and notes are shown as typed, never read as rich markup
    table = Table(title=Text(title))
    for column in header:
        table.add_column(column, justify="left" if column in ("device", "model", "target", "notes") else "right")
    for cells in body:
        table.add_row(*(Text(cell) for cell in cells))
    target_console.print(table)
    for line in footnotes:
        target_console.print(line, soft_wrap=True, markup=False)


def _print_profile(target_console: Console, entry: dict) -> None:
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
    md: Annotated[
        Optional[Path], typer.Option("--md", callback=file_target, help="Write Markdown here (chart PNGs beside it).")
    ] = None,
    html: Annotated[
        Optional[Path], typer.Option("--html", callback=file_target, help="Write one self-contained HTML file here.")
    ] = None,
    json_target: JsonOption = None,
) -> None:
    """Merge bench results from several devices into one table with charts."""
    from dataclasses import asdict

    from mfdeploy.benchmark.report import write_report

    output = write_report(files, md=md, html_path=html)
    merged = output.merged
    say = human(json_target)
    print_rows(say, merged.rows, title=f"{len(merged.files)} result file(s)")
    for skip in merged.skipped:
        console.err.print(
            f"{skip['device']}: {skip['kind']} {skip['target']} ({skip['model']}): {skip['reason']}",
            soft_wrap=True,
            markup=False,
        )
    for path in output.written:
        console.err.print(f"wrote {path}", soft_wrap=True, markup=False)
    write_json(
        {
            "files": [name for name, _ in merged.files],
            "rows": [asdict(row) for row in merged.rows],
            "skipped": merged.skipped,
            "warnings": merged.warnings,
            "written": [str(path) for path in output.written],
        },
        json_target,
    )
