"""`mfdeploy report`: merged result files rendered as one table (device x target x precision x batch),
with charts, as Markdown (PNGs beside it) and/or self-contained HTML (PNGs embedded).

The rows and their cells come from :mod:`mfdeploy.benchmark.rows`; this module only lays them out.
``document_rows`` and ``terminal_cells`` are re-exported for the CLI, which prints a run's rows.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfdeploy import markdown as md
from mfdeploy.benchmark.plots import CLIP_HEADROOM, MIN_BARS_TO_CLIP, OUTLIER_RATIO
from mfdeploy.benchmark.rows import (
    SKIPPED_HEADERS,
    TEXT_COLUMNS,
    Merged,
    Row,
    caveat_marks,
    document_rows,
    environment_rows,
    has_accuracy,
    merge,
    model_label,
    profile_blocks,
    skipped_rows,
    table_cells,
    table_columns,
    terminal_cells,
)
from mfdeploy.benchmark.stats import CV_LIMIT, MIN_RUNS_FOR_TAIL, TAIL_RATIO_LIMIT
from mfdeploy.fileio import atomic_path, check_file_target

__all__ = ["ReportOutput", "document_rows", "terminal_cells", "to_html", "to_markdown", "write_report"]

PLOTS = {"latency_vs_batch": "Latency and throughput vs batch size", "by_device": "Median latency by device"}

METHOD_NOTES = [
    "Latency: one `runner.run(images)` call on a prepared float32 batch, host clock before and after "
    "(outputs back on the host as numpy). Warm-up runs and the first run after loading are excluded.",
    "Percentiles by linear interpolation between closest ranks (numpy's default). Throughput = batch / mean "
    "latency, one batch at a time. GMAC/s = the model's multiply-adds per image x batch / mean latency.",
    "First load: runner construction + load() (session or engine creation) in a fresh process, the "
    "backend library already imported.",
    "Peak RSS: high-water resident memory of a fresh process that measured only this target at this batch "
    "(interpreter, numpy, backend library, model, buffers); 'added' is the part added after the backend "
    "library was imported (model, session, buffers). GPU memory: the process's use per the driver (NVML), "
    "CUDA context included, where there is an NVIDIA GPU.",
    f"Notes flag noise: p99 over {TAIL_RATIO_LIMIT:g}x p50, std over {CV_LIMIT:.0%} of the mean, or fewer than "
    f"{MIN_RUNS_FOR_TAIL} timed runs. On a quiet machine a fixed graph on a fixed input stays well inside these; "
    "outside them the figures describe the machine's load as much as the backend.",
    f"Charts: in the bar chart, a bar more than {OUTLIER_RATIO:g}x the median of the other bars of its panel "
    f"(at least {MIN_BARS_TO_CLIP} bars) is an outlier: the axis ends at {CLIP_HEADROOM:g}x the longest bar that is "
    "not one, and the outlier is cut there, its value written on it. The latency-vs-batch chart has log axes and "
    "is not clipped. Timings that are not a device latency (a runner's caveat, such as the Core ML MIL evaluator) are "
    "hatched bars and hollow markers.",
]

ACCURACY_NOTE = (
    "Accuracy (bench --data): top-1/top-5 of each target on labelled data, loaded and scored as `mfdeploy eval` "
    "does, once per target (the same figure on each of its batch rows), in a fresh process with the runner "
    "options the latency cells used; 'eval images' is how many labelled images were scored."
)


def method_notes(rows: Sequence[Row]) -> list[str]:
    return METHOD_NOTES + ([ACCURACY_NOTE] if has_accuracy(rows) else [])


PROFILE_NOTE = (
    "Layer times come from the backend's profiler on a separate profiling runner; profiling adds "
    "overhead per layer, so shares are meaningful and absolute sums exceed the latency above."
)


def _md_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table; every cell may hold a device name, path, label or message, so all are escaped."""
    lines = ["| " + " | ".join(md.text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md.text(c) for c in cells) + " |" for cells in body]
    return lines


def to_markdown(merged: Merged, plot_files: dict[str, str]) -> str:
    marks = caveat_marks(merged.rows)
    columns = table_columns(merged.rows)
    devices = list(dict.fromkeys(d["device"] for _, d in merged.files))
    lines = [
        "# Mobile-Former latency report",
        "",
        f"{len(merged.files)} result file(s) from {len(devices)} device(s): "
        + ", ".join(md.text(f"{Path(p).name} ({d['device']}, {model_label(d)})") for p, d in merged.files)
        + ".",
        "",
        "## Latency",
        "",
        *_md_table(columns, [table_cells(row, marks, columns) for row in merged.rows]),
        "",
    ]
    lines += [f"{mark} {md.text(caveat)}" for caveat, mark in marks.items()]
    if marks:
        lines.append("")
    if plot_files:
        lines += ["## Charts", ""]
        lines += [f"![{PLOTS[name]}]({md.link_target(filename)})" + "\n" for name, filename in plot_files.items()]
    if merged.skipped:
        lines += ["## Skipped", ""]
        lines += _md_table(
            SKIPPED_HEADERS,
            skipped_rows(merged),
        )
        lines.append("")
    if merged.warnings:
        lines += ["## Warnings", ""] + [f"- {md.text(w)}" for w in merged.warnings] + [""]
    header, body = environment_rows(merged.files)
    lines += ["## Environment", "", *_md_table(header, body), ""]
    blocks = profile_blocks(merged.rows)
    if blocks:
        lines += ["## Per-layer profiles", "", PROFILE_NOTE, ""]
        for title, stage_header, stage_body, top_header, top_body in blocks:
            lines += [
                f"### {md.text(title)}",
                "",
                *_md_table(stage_header, stage_body),
                "",
                *_md_table(top_header, top_body),
                "",
            ]
    lines += ["## How these numbers were measured", ""] + [f"- {note}" for note in method_notes(merged.rows)] + [""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; vertical-align: top; }
th { background: #f2f2f2; }
td:first-child, th:first-child, .text { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0 1rem; }
.warn { color: #8a4b00; } .fail { color: #a00000; } small { color: #555; }
"""


def _html_table(header: Sequence[str], body: Sequence[Sequence[Any]], text_columns: Sequence[int] = ()) -> str:
    head = "".join(
        f'<th class="text">{html.escape(str(h))}</th>' if i in text_columns else f"<th>{html.escape(str(h))}</th>"
        for i, h in enumerate(header)
    )
    rows = []
    for cells in body:
        tds = "".join(
            f'<td class="text">{html.escape(str(c))}</td>' if i in text_columns else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(cells)
        )
        rows.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_html(merged: Merged, plots: dict[str, bytes]) -> str:
    marks = caveat_marks(merged.rows)
    columns = table_columns(merged.rows)
    text_columns = tuple(i for i, name in enumerate(columns) if name in TEXT_COLUMNS)
    devices = list(dict.fromkeys(d["device"] for _, d in merged.files))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Mobile-Former latency report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Mobile-Former latency report</h1>",
        "<p>"
        + html.escape(
            f"{len(merged.files)} result file(s) from {len(devices)} device(s): "
            + ", ".join(f"{Path(p).name} ({d['device']}, {model_label(d)})" for p, d in merged.files)
        )
        + "</p>",
        "<h2>Latency</h2>",
        _html_table(columns, [table_cells(row, marks, columns) for row in merged.rows], text_columns=text_columns),
    ]
    parts += [f"<p><small>{html.escape(mark)} {html.escape(caveat)}</small></p>" for caveat, mark in marks.items()]
    if plots:
        parts.append("<h2>Charts</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(PLOTS[name])}">'
                f"<figcaption>{html.escape(PLOTS[name])}</figcaption></figure>"
            )
    if merged.skipped:
        parts.append("<h2>Skipped</h2>")
        parts.append(
            _html_table(
                SKIPPED_HEADERS,
                skipped_rows(merged),
                text_columns=(0, 1, 2, 3, 4),
            )
        )
    if merged.warnings:
        parts.append(
            "<h2>Warnings</h2><ul>"
            + "".join(f'<li class="warn">{html.escape(w)}</li>' for w in merged.warnings)
            + "</ul>"
        )
    header, body = environment_rows(merged.files)
    parts += ["<h2>Environment</h2>", _html_table(header, body, text_columns=tuple(range(len(header))))]
    blocks = profile_blocks(merged.rows)
    if blocks:
        parts += ["<h2>Per-layer profiles</h2>", f"<p><small>{html.escape(PROFILE_NOTE)}</small></p>"]
        for title, stage_header, stage_body, top_header, top_body in blocks:
            parts += [
                f"<h3>{html.escape(title)}</h3>",
                _html_table(stage_header, stage_body, (0,)),
                _html_table(top_header, top_body, (0, 1, 2, 5)),
            ]
    parts += ["<h2>How these numbers were measured</h2><ul>"]
    parts += [f"<li>{html.escape(note)}</li>" for note in method_notes(merged.rows)]
    parts += ["</ul></body></html>", ""]
    return "\n".join(parts)


@dataclass
class ReportOutput:
    merged: Merged
    written: list[Path]


def render_plots(rows: Sequence[Row]) -> dict[str, bytes]:
    from mfdeploy.benchmark import plots

    figures = {"latency_vs_batch": plots.latency_vs_batch(rows), "by_device": plots.by_device(rows)}
    return {name: png for name, png in figures.items() if png is not None}


def write_report(paths: Sequence[str | Path], md: Path | None = None, html_path: Path | None = None) -> ReportOutput:
    """Merge ``paths`` and write the Markdown (with PNGs beside it) and/or the self-contained HTML."""
    merged = merge(paths)
    written: list[Path] = []
    if md is None and html_path is None:
        return ReportOutput(merged, written)
    plots = render_plots(merged.rows)
    if md is not None:
        md = Path(md)
        plot_targets = {name: md.with_name(f"{md.stem}-{name.replace('_', '-')}.png") for name in plots}
        for target in [md, *plot_targets.values(), *([Path(html_path)] if html_path else [])]:
            check_file_target(target)  # every target before the first write: no half-written report
        plot_files = {}
        for name, png in plots.items():
            target = plot_targets[name]
            with atomic_path(target) as tmp:
                tmp.write_bytes(png)
            plot_files[name] = target.name
            written.append(target)
        with atomic_path(md) as tmp:
            tmp.write_text(to_markdown(merged, plot_files))
        written.append(md)
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            tmp.write_text(to_html(merged, plots))
        written.append(Path(html_path))
    return ReportOutput(merged, written)
