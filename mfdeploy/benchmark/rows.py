"""Benchmark result files as rows: merging files from several devices, the row model, and table cells.

One :class:`Row` per measured cell (device x model x target x batch). The terminal table, the Markdown
and HTML reports (:mod:`mfdeploy.benchmark.report`) and the charts (:mod:`mfdeploy.benchmark.plots`)
all read these rows; the cells here are the one place a figure is formatted for a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.benchmark.schema import load_result
from mfdeploy.benchmark.stats import CV_LIMIT, MIN_RUNS_FOR_TAIL, TAIL_RATIO_LIMIT
from mfdeploy.runtime.registry import TARGETS


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
    # bench --data: the target's accuracy on labelled data (the same on each of its batch rows)
    top1: float | None = None
    top5: float | None = None
    accuracy_images: int | None = None
    accuracy_data: str | None = None  # the data's name; set on every row of a run with --data
    accuracy_note: str | None = None  # why the figures mean nothing (an untrained model), as eval says it


@dataclass
class Merged:
    """Several result files as one: the files as loaded, their rows in table order, skips and warnings."""

    files: list[tuple[str, dict[str, Any]]]
    rows: list[Row]
    skipped: list[dict[str, Any]]
    warnings: list[str]


def model_label(document: dict[str, Any]) -> str:
    """How tables name the model a result document measured: size and input resolution."""
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


def _accuracy_fields(accuracy: dict[str, Any] | None, target: str) -> tuple[dict[str, Any], list[str]]:
    """A row's accuracy fields from the result's "accuracy" block, and a note when its target has none."""
    if not accuracy:
        return {}, []
    score = next((a for a in accuracy["results"] if a["target"] == target), None) or {"status": "missing"}
    fields = {"accuracy_data": accuracy["source"]}
    if score["status"] == "ok":
        figures = {"top1": score["top1"], "top5": score["top5"], "accuracy_images": score["images"]}
        return fields | figures | {"accuracy_note": accuracy.get("untrained_note")}, []
    if score["status"] == "skipped":
        return fields, [f"no accuracy: {score.get('reason', 'skipped')}"]
    return fields, ["accuracy failed (see warnings)" if score["status"] == "failed" else "no accuracy"]


def document_rows(document: dict[str, Any], source: str) -> list[Row]:
    """The measured cells of one result document as rows."""
    rows = []
    model = model_label(document)
    for entry in document["results"]:
        accuracy, accuracy_notes = _accuracy_fields(document.get("accuracy"), entry["target"])
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
                notes=_notes(latency) + accuracy_notes,
                profile=profile if profile.get("available") else None,
                **accuracy,
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
        model = model_label(document)
        for entry in document["skipped"]:
            skipped.append({"device": device, "model": model, "source": source, **entry})
        warnings.extend(f"{device} ({source}): {w}" for w in document["warnings"])
    rows.sort(key=lambda r: (r.device, r.model, _target_order(r.target), r.batch))
    return Merged(files, rows, skipped, warnings)


# -- table cells -----------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10**digits:  # no exponents: 350 stays 350 at 2 significant digits
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"  # as `mfdeploy eval` prints it


#: Every column a table can show, by its header in the reports.
_CELLS: dict[str, Callable[[Row], str]] = {
    "device": lambda row: row.device,
    "model": lambda row: row.model,
    "target": lambda row: row.target,
    "runtime": lambda row: row.label,
    "precision": lambda row: row.precision,
    "batch": lambda row: str(row.batch),
    "p50 ms": lambda row: _num(row.p50),
    "p90 ms": lambda row: _num(row.p90),
    "p99 ms": lambda row: _num(row.p99),
    "mean ± std ms": lambda row: f"{_num(row.mean)} ± {_num(row.std, 2)}",
    "img/s": lambda row: _num(row.throughput),
    "GMAC/s": lambda row: _num(row.gmacs),
    "first load ms": lambda row: _num(row.first_load_ms),
    "peak RSS MB (added)": lambda row: (
        "-" if row.rss_peak_mb is None else f"{row.rss_peak_mb:.0f} ({_num(row.rss_increase_mb)})"
    ),
    "RSS MB": lambda row: _num(row.rss_peak_mb),
    "GPU MB": lambda row: _num(row.gpu_mb),
    "file MB": lambda row: _num(row.file_mb),
    "top-1": lambda row: _percent(row.top1),
    "top-5": lambda row: _percent(row.top5),
    "eval images": lambda row: "-" if row.accuracy_images is None else str(row.accuracy_images),
}

#: The reports' latency table: every column, notes last.
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
#: With bench --data, after "file MB": size on disk, accuracy and latency in one table.
ACCURACY_COLUMNS = ["top-1", "top-5", "eval images"]
#: The columns that hold text (left-aligned), whichever table they are in.
TEXT_COLUMNS = {"device", "model", "target", "runtime", "precision", "notes"}


def has_accuracy(rows: Sequence[Row]) -> bool:
    """Whether any row comes from a run with --data (then the tables gain the accuracy columns)."""
    return any(row.accuracy_data is not None for row in rows)


def table_columns(rows: Sequence[Row]) -> list[str]:
    """The reports' columns for ``rows``: :data:`TABLE_COLUMNS`, with the accuracy columns after the file
    size when any row has accuracy."""
    if not has_accuracy(rows):
        return list(TABLE_COLUMNS)
    at = TABLE_COLUMNS.index("file MB") + 1
    return TABLE_COLUMNS[:at] + ACCURACY_COLUMNS + TABLE_COLUMNS[at:]


#: The terminal's narrower table, with shorter headers where the reports spell units out.
_TERMINAL_COLUMNS = ["target", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "img/s", "GMAC/s"]
_TERMINAL_COLUMNS += ["first load ms", "RSS MB"]
_TERMINAL_HEADERS = {"mean ± std ms": "mean ± std", "first load ms": "load ms"}


def _accuracy_footnote(row: Row) -> str | None:
    return f"top-1/top-5: {row.accuracy_note}" if row.accuracy_note else None


def caveat_marks(rows: Sequence[Row]) -> dict[str, str]:
    """Footnote text -> its mark ("[1]", "[2]"...), numbered in row order: each row's caveat (why its latency
    is not a device latency), then the note on its accuracy figures (an untrained model's)."""
    texts = dict.fromkeys(text for r in rows for text in (r.caveat, _accuracy_footnote(r)) if text)
    return {text: f"[{i + 1}]" for i, text in enumerate(texts)}


def _row_cells(row: Row, columns: Sequence[str], marks: dict[str, str], terminal: bool) -> list[str]:
    """The cells of ``columns`` and then the notes: the row's noise notes, its GPU compute time, and the
    references to its footnotes (the caveat's before the GPU compute time in the ``terminal``)."""
    compute = [] if row.gpu_compute_p50 is None else [f"GPU compute p50 {_num(row.gpu_compute_p50)} ms"]
    refer = (lambda mark: mark) if terminal else (lambda mark: f"see note {mark}")
    caveat = [refer(marks[row.caveat])] if row.caveat else []
    accuracy = [refer(marks[_accuracy_footnote(row)])] if row.accuracy_note else []
    notes = row.notes + (caveat + compute if terminal else compute + caveat) + accuracy
    return [_CELLS[name](row) for name in columns] + ["; ".join(notes)]


def table_cells(row: Row, marks: dict[str, str], columns: Sequence[str] = TABLE_COLUMNS) -> list[str]:
    """The row under ``columns`` (:func:`table_columns`, notes last), for the Markdown and HTML reports
    (``marks``: :func:`caveat_marks`)."""
    return _row_cells(row, columns[:-1], marks, terminal=False)


def terminal_cells(rows: Sequence[Row]) -> tuple[list[str], list[list[str]], list[str]]:
    """A narrower table for the terminal: device/model only when they vary, runtimes and caveats as footnotes;
    with accuracy, the file size and top-1/top-5 instead of p90 and GMAC/s (the image count in a footnote)."""
    marks = caveat_marks(rows)
    lead = [name for name in ("device", "model") if len({_CELLS[name](r) for r in rows}) > 1]
    gpu = ["GPU MB"] if any(r.gpu_mb is not None for r in rows) else []
    columns = lead + _TERMINAL_COLUMNS + gpu
    if has_accuracy(rows):  # room for size and accuracy: p90 and GMAC/s stay in the reports and the JSON
        columns = [name for name in columns if name not in ("p90 ms", "GMAC/s")] + ["file MB", "top-1", "top-5"]
    header = [_TERMINAL_HEADERS.get(name, name) for name in columns] + ["notes"]
    body = [_row_cells(row, columns, marks, terminal=True) for row in rows]
    runtimes = dict.fromkeys(f"{r.target} = {r.label}" for r in rows)
    footnotes = ["runtimes: " + "; ".join(runtimes)]
    footnotes += [
        f"accuracy: top-1/top-5 on {data}, {images} labelled images, once per target (not per batch)"
        for data, images in dict.fromkeys(
            (r.accuracy_data, r.accuracy_images) for r in rows if r.accuracy_images is not None
        )
    ]
    footnotes += [f"{mark} {text}" for text, mark in marks.items()]
    return header, body, footnotes


SKIPPED_HEADERS = ["device", "model", "target", "batches", "why"]


def skipped_rows(merged: Merged) -> list[list[str]]:
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

    def accuracy_data(env, doc):
        accuracy = doc.get("accuracy")
        if not accuracy:
            return None
        skipped = f", {accuracy['skipped_files']} unreadable files skipped" if accuracy.get("skipped_files") else ""
        return f"{accuracy['source']}: {accuracy['images']} labelled images{skipped}, batch {accuracy['batch']}"

    def library(name):
        return lambda env, _: env["libraries"].get(name)

    fields = [
        (
            "model",
            lambda env, doc: (
                f"{model_label(doc)}, {doc['model'].get('num_classes')} classes, "
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
        ("accuracy data", accuracy_data),
        ("created", lambda env, doc: doc.get("created")),
        ("command", lambda env, doc: doc.get("command")),
    ]
    body = [[name, *field_of(get)] for name, get in fields]
    body = [row for row in body if any(cell != "-" for cell in row[1:])]
    return header, body


def profile_blocks(rows: Sequence[Row]) -> list[tuple[str, list[str], list[list[str]], list[str], list[list[str]]]]:
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
