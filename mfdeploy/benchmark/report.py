"""`mfdeploy report`: merge result files from several devices into one table (device x target x precision
x batch), with charts, as Markdown (PNGs beside it) and/or self-contained HTML (PNGs embedded)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.benchmark.schema import load_result
from mfdeploy.benchmark.stats import CV_LIMIT, MIN_RUNS_FOR_TAIL, TAIL_RATIO_LIMIT
from mfdeploy.fileio import atomic_path
from mfdeploy.runtime.registry import TARGETS

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
]


@dataclass
class Row:
    """One measured cell, flattened for tables and charts."""

    device: str
    model: str
    target: str
    label: str
    precision: str
    batch: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int
    throughput: float | None
    gmacs: float | None
    first_load_ms: float
    rss_peak_mb: float | None
    rss_increase_mb: float | None
    gpu_mb: float | None
    file_mb: float | None
    gpu_compute_p50: float | None
    caveat: str | None
    source: str
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None


@dataclass
class Merged:
    files: list[tuple[str, dict[str, Any]]]
    rows: list[Row]
    skipped: list[dict[str, Any]]
    warnings: list[str]


def _model_label(document: dict[str, Any]) -> str:
    model = document["model"]
    return f"{model['size']} @{model['imgsz']}px"


def _target_order(target: str) -> int:
    names = list(TARGETS)
    return names.index(target) if target in names else len(names)


def _notes(latency: dict[str, Any]) -> list[str]:
    notes = []
    if latency["p50"] > 0 and latency["p99"] > TAIL_RATIO_LIMIT * latency["p50"]:
        notes.append(f"p99 {latency['p99'] / latency['p50']:.1f}x p50")
    if latency["mean"] > 0 and latency["std"] > CV_LIMIT * latency["mean"]:
        notes.append(f"std {latency['std'] / latency['mean']:.0%} of mean")
    if latency["n"] < MIN_RUNS_FOR_TAIL:
        notes.append(f"only {latency['n']} runs")
    return notes


def document_rows(document: dict[str, Any], source: str) -> list[Row]:
    """The measured cells of one result document as rows."""
    rows = []
    model = _model_label(document)
    for entry in document["results"]:
        latency = entry["latency_ms"]
        memory = entry["memory"]
        gpu = memory.get("gpu") or {}
        file_info = entry.get("model_file") or {}
        compute = (entry.get("device_timings_ms") or {}).get("gpu_compute") or {}
        profile = entry.get("profile") or {}
        rows.append(
            Row(
                device=document["device"],
                model=model,
                target=entry["target"],
                label=entry["label"],
                precision=entry["precision"],
                batch=entry["batch"],
                p50=latency["p50"],
                p90=latency["p90"],
                p99=latency["p99"],
                mean=latency["mean"],
                std=latency["std"],
                n=latency["n"],
                throughput=entry.get("throughput_ips"),
                gmacs=entry.get("gmacs"),
                first_load_ms=entry["first_load_ms"],
                rss_peak_mb=memory.get("rss_peak_mb"),
                rss_increase_mb=memory.get("rss_increase_mb"),
                gpu_mb=gpu.get("mb"),
                file_mb=round(file_info["bytes"] / 2**20, 2) if file_info.get("bytes") is not None else None,
                gpu_compute_p50=compute.get("p50"),
                caveat=entry.get("caveat"),
                source=source,
                notes=_notes(latency),
                profile=profile if profile.get("available") else None,
            )
        )
    return rows


def merge(paths: Sequence[str | Path]) -> Merged:
    """Load and validate every file (a bad one is a one-line error naming it) and flatten them into rows.

    Two files that measured the same device, model, target and batch (the same --device-name used twice)
    stay apart: the later file's device is shown as "device (file name)", with a warning.
    """
    files = [(str(path), load_result(path)) for path in paths]
    rows: list[Row] = []
    skipped: list[dict[str, Any]] = []
    warnings: list[str] = []
    seen: dict[tuple, str] = {}
    for path, document in files:
        source = Path(path).name
        device = document["device"]
        file_rows = document_rows(document, source)
        clashes = [
            seen[(r.device, r.model, r.target, r.batch)]
            for r in file_rows
            if (r.device, r.model, r.target, r.batch) in seen
        ]
        if clashes:
            device = f"{device} ({source})"
            warnings.append(
                f"{source} measured the same device, model, targets and batches as {clashes[0]} (device name "
                f"{document['device']!r}); its rows are labelled {device!r}: give each device its own --device-name"
            )
            for row in file_rows:
                row.device = device
        for row in file_rows:
            seen[(row.device, row.model, row.target, row.batch)] = source
        rows += file_rows
        model = _model_label(document)
        for entry in document["skipped"]:
            skipped.append({"device": device, "model": model, "source": source, **entry})
        warnings.extend(f"{device} ({source}): {w}" for w in document["warnings"])
    rows.sort(key=lambda r: (r.device, r.model, _target_order(r.target), r.batch))
    return Merged(files, rows, skipped, warnings)


# -- formatting ------------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10**digits:  # no exponents: 350 stays 350 at 2 significant digits
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


TABLE_COLUMNS = [
    "device",
    "model",
    "target",
    "runtime",
    "precision",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ± std ms",
    "img/s",
    "GMAC/s",
    "first load ms",
    "peak RSS MB (added)",
    "GPU MB",
    "file MB",
    "notes",
]


def table_cells(row: Row, caveat_marks: dict[str, str]) -> list[str]:
    notes = list(row.notes)
    if row.gpu_compute_p50 is not None:
        notes.append(f"GPU compute p50 {_num(row.gpu_compute_p50)} ms")
    if row.caveat:
        notes.append(f"see note {caveat_marks[row.caveat]}")
    rss = "-" if row.rss_peak_mb is None else f"{row.rss_peak_mb:.0f} ({_num(row.rss_increase_mb)})"
    return [
        row.device,
        row.model,
        row.target,
        row.label,
        row.precision,
        str(row.batch),
        _num(row.p50),
        _num(row.p90),
        _num(row.p99),
        f"{_num(row.mean)} ± {_num(row.std, 2)}",
        _num(row.throughput),
        _num(row.gmacs),
        _num(row.first_load_ms),
        rss,
        _num(row.gpu_mb),
        _num(row.file_mb),
        "; ".join(notes),
    ]


def terminal_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]], list[str]]:
    """A narrower table for the terminal: device/model only when they vary, runtimes and caveats as footnotes."""
    marks = _caveat_marks(rows)
    header = ["target", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std", "img/s", "GMAC/s", "load ms", "RSS MB"]
    lead = [
        name
        for name, values in (("device", {r.device for r in rows}), ("model", {r.model for r in rows}))
        if len(values) > 1
    ]
    has_gpu = any(r.gpu_mb is not None for r in rows)
    header = lead + header + (["GPU MB"] if has_gpu else []) + ["notes"]
    body = []
    for row in rows:
        cells = [getattr(row, name) for name in lead] + [
            row.target,
            str(row.batch),
            _num(row.p50),
            _num(row.p90),
            _num(row.p99),
            f"{_num(row.mean)} ± {_num(row.std, 2)}",
            _num(row.throughput),
            _num(row.gmacs),
            _num(row.first_load_ms),
            _num(row.rss_peak_mb),
        ]
        if has_gpu:
            cells.append(_num(row.gpu_mb))
        notes = list(row.notes) + ([marks[row.caveat]] if row.caveat else [])
        if row.gpu_compute_p50 is not None:
            notes.append(f"GPU compute p50 {_num(row.gpu_compute_p50)} ms")
        body.append(cells + ["; ".join(notes)])
    runtimes = dict.fromkeys(f"{r.target} = {r.label}" for r in rows)
    footnotes = ["runtimes: " + "; ".join(runtimes)] + [f"{mark} {caveat}" for caveat, mark in marks.items()]
    return header, body, footnotes


def _caveat_marks(rows: Sequence[Row]) -> dict[str, str]:
    return {caveat: f"[{i + 1}]" for i, caveat in enumerate(dict.fromkeys(r.caveat for r in rows if r.caveat))}


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]
    return lines


def environment_rows(files: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """One column per result file: what device, CPU, GPU, OS, libraries and threads each ran with."""
    header = ["", *[f"{d['device']} ({Path(p).name})" for p, d in files]]

    def field_of(get) -> list[str]:
        values = []
        for _, document in files:
            try:
                value = get(document["environment"], document)
            except (KeyError, TypeError, IndexError):
                value = None
            values.append("-" if value in (None, "", []) else str(value))
        return values

    def cores(env, _):
        cpu = env["cpu"]
        return f"{cpu.get('usable_cores', cpu.get('logical_cores'))} usable / {cpu.get('logical_cores')} logical" + (
            f" / {cpu['physical_cores']} physical" if cpu.get("physical_cores") else ""
        )

    def gpus(env, _):
        return ", ".join(
            f"{g['name']} (driver {g.get('driver', '?')}, {g.get('memory_mb', '?')} MB)" for g in env["gpus"]
        )

    def threads(env, doc):
        t = env["threads"]
        requested = t.get("requested")
        extra = ", ".join(f"{k}={v}" for k, v in (t.get("environment") or {}).items())
        return (f"{requested} (ORT intra-op, torch)" if requested else "backend defaults") + (
            f"; {extra}" if extra else ""
        )

    def library(name):
        return lambda env, _: env["libraries"].get(name)

    fields = [
        (
            "model",
            lambda env, doc: (
                f"{_model_label(doc)}, {doc['model'].get('num_classes')} classes, "
                f"{_num((doc['model'].get('madds') or 0) / 1e6)} M MAdds"
            ),
        ),
        ("board", lambda env, _: env.get("board")),
        ("CPU", lambda env, _: env["cpu"].get("model")),
        ("cores", cores),
        ("CPU features", lambda env, _: " ".join(env["cpu"].get("flags", []))),
        ("memory GB", lambda env, _: env.get("memory_gb")),
        ("GPU", gpus),
        ("OS", lambda env, _: env["os"].get("platform")),
        ("Python", lambda env, _: env["python"].get("version")),
        ("mfdeploy", library("mfdeploy")),
        ("torch", library("torch")),
        ("onnxruntime", lambda env, _: env["libraries"].get("onnxruntime") or env["libraries"].get("onnxruntime-gpu")),
        ("tensorrt", library("tensorrt")),
        ("coremltools", library("coremltools")),
        ("threads", threads),
        (
            "runs",
            lambda env, doc: (
                (
                    f"{doc['settings']['runs']} timed"
                    if doc["settings"].get("runs")
                    else f">= {doc['settings']['min_time_s']} s"
                )
                + f", {doc['settings']['warmup']} warm-up"
            ),
        ),
        (
            "load average (1, 5, 15 min) at start",
            lambda env, _: " ".join(map(str, env.get("load_average_at_start", []))),
        ),
        ("load average at end", lambda env, _: " ".join(map(str, env.get("load_average_at_end", [])))),
        ("created", lambda env, doc: doc.get("created")),
        ("command", lambda env, doc: doc.get("command")),
    ]
    body = [[name, *field_of(get)] for name, get in fields]
    body = [row for row in body if any(cell != "-" for cell in row[1:])]
    return header, body


def _profile_blocks(rows: Sequence[Row]) -> list[tuple[str, list[str], list[list[str]], list[str], list[list[str]]]]:
    blocks = []
    for row in rows:
        profile = row.profile
        if not profile:
            continue
        unit = "ms" if profile["metric"] == "time_ms" else "est. cost"
        title = (
            f"{row.device}, {row.model}, {row.target}, batch {row.batch}: {profile.get('source', '')}, "
            f"{profile['runs']} profiled runs, {profile['layers']} layers, {profile['mapped_share']:.0%} of the "
            f"time mapped to stages"
        )
        stage_header = ["stage", unit, "share", "layers"]
        stage_body = [[s["stage"], _num(s["value"]), f"{s['share']:.1%}", str(s["layers"])] for s in profile["stages"]]
        top_header = ["layer", "op", "stage", unit, "share", "device"]
        top_body = [
            [t["name"], t.get("op") or "-", t["stage"], _num(t["value"]), f"{t['share']:.1%}", t.get("device") or "-"]
            for t in profile["top_layers"]
        ]
        blocks.append((title, stage_header, stage_body, top_header, top_body))
    return blocks


PROFILE_NOTE = (
    "Layer times come from the backend's profiler on a separate profiling runner; profiling adds "
    "overhead per layer, so shares are meaningful and absolute sums exceed the latency above."
)


def to_markdown(merged: Merged, plot_files: dict[str, str]) -> str:
    marks = _caveat_marks(merged.rows)
    devices = list(dict.fromkeys(d["device"] for _, d in merged.files))
    lines = [
        "# Mobile-Former latency report",
        "",
        f"{len(merged.files)} result file(s) from {len(devices)} device(s): "
        + ", ".join(f"`{Path(p).name}` ({d['device']}, {_model_label(d)})" for p, d in merged.files)
        + ".",
        "",
        "## Latency",
        "",
        *_md_table(TABLE_COLUMNS, [table_cells(row, marks) for row in merged.rows]),
        "",
    ]
    lines += [f"{mark} {caveat}" for caveat, mark in marks.items()]
    if marks:
        lines.append("")
    if plot_files:
        lines += ["## Charts", ""]
        lines += [f"![{PLOTS[name]}]({filename})" + "\n" for name, filename in plot_files.items()]
    if merged.skipped:
        lines += ["## Skipped", ""]
        lines += _md_table(
            SKIPPED_HEADERS,
            _skipped_rows(merged),
        )
        lines.append("")
    if merged.warnings:
        lines += ["## Warnings", ""] + [f"- {_md_escape(w)}" for w in merged.warnings] + [""]
    header, body = environment_rows(merged.files)
    lines += ["## Environment", "", *_md_table(header, body), ""]
    blocks = _profile_blocks(merged.rows)
    if blocks:
        lines += ["## Per-layer profiles", "", PROFILE_NOTE, ""]
        for title, stage_header, stage_body, top_header, top_body in blocks:
            lines += [
                f"### {title}",
                "",
                *_md_table(stage_header, stage_body),
                "",
                *_md_table(top_header, top_body),
                "",
            ]
    lines += ["## How these numbers were measured", ""] + [f"- {note}" for note in METHOD_NOTES] + [""]
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
    marks = _caveat_marks(merged.rows)
    devices = list(dict.fromkeys(d["device"] for _, d in merged.files))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Mobile-Former latency report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Mobile-Former latency report</h1>",
        "<p>"
        + html.escape(
            f"{len(merged.files)} result file(s) from {len(devices)} device(s): "
            + ", ".join(f"{Path(p).name} ({d['device']}, {_model_label(d)})" for p, d in merged.files)
        )
        + "</p>",
        "<h2>Latency</h2>",
        _html_table(TABLE_COLUMNS, [table_cells(row, marks) for row in merged.rows], text_columns=(0, 1, 2, 3, 4, 16)),
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
                _skipped_rows(merged),
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
    blocks = _profile_blocks(merged.rows)
    if blocks:
        parts += ["<h2>Per-layer profiles</h2>", f"<p><small>{html.escape(PROFILE_NOTE)}</small></p>"]
        for title, stage_header, stage_body, top_header, top_body in blocks:
            parts += [
                f"<h3>{html.escape(title)}</h3>",
                _html_table(stage_header, stage_body, (0,)),
                _html_table(top_header, top_body, (0, 1, 2, 5)),
            ]
    parts += ["<h2>How these numbers were measured</h2><ul>"]
    parts += [f"<li>{html.escape(note)}</li>" for note in METHOD_NOTES]
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
        plot_files = {}
        for name, png in plots.items():
            target = md.with_name(f"{md.stem}-{name.replace('_', '-')}.png")
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


SKIPPED_HEADERS = ["device", "model", "target", "batches", "why"]


def _skipped_rows(merged) -> list[list[str]]:
    """One row per skipped (or failed) target of every merged run, for the Markdown and HTML tables."""
    return [
        [
            s["device"],
            s["model"],
            s["target"],
            ",".join(map(str, s["batches"])),
            ("FAILED: " if s["kind"] == "failed" else "") + s["reason"],
        ]
        for s in merged.skipped
    ]
