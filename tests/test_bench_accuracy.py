"""`mfdeploy bench --data`: each target's accuracy beside its size and latency, with real PyTorch and ONNX
Runtime on the real digits set, scored as `mfdeploy eval` scores it; and the report charts' rules (outliers
clipped and annotated, timings that are not a device latency hatched). No test asserts how fast anything is."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from mfdeploy.benchmark import plots
from mfdeploy.benchmark.rows import Row
from mfdeploy.thresholds import UNTRAINED_NOTE

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "bench-result.schema.json").read_text())
TARGETS = ["onnx", "onnx-int8"]  # the small artifact has no INT8 graph: onnx-int8 is skipped
QUICK = ["--runs", "3", "--warmup", "0"]


@pytest.fixture(scope="module")
def scored(small_export, tmp_path_factory):
    """One real `bench --data builtin-digits` of the small (10-class, 64 px, untrained) artifact: its result
    file and what it printed."""
    from mfdeploy.cli import main

    out = tmp_path_factory.mktemp("bench-accuracy") / "bench.json"
    argv = ["bench", small_export, "--targets", ",".join(TARGETS), "--batches", "1,2", *QUICK]
    argv += ["--data", "builtin-digits", "--json", out]
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            assert exc.code in (0, None), errors.getvalue()
    return {"path": out, "document": json.loads(out.read_text()), "out": printed.getvalue(), "err": errors.getvalue()}


def test_bench_data_scores_each_target_once_as_eval_does(cli, scored, small_export, tmp_path):
    document = scored["document"]
    jsonschema.validate(document, SCHEMA)
    accuracy = document["accuracy"]
    assert accuracy["data"] == document["settings"]["data"] == "builtin-digits" and accuracy["batch"] == 32
    assert accuracy["untrained"] is True and accuracy["untrained_note"] == UNTRAINED_NOTE
    # one entry per target that ran, not per batch; the skipped onnx-int8 has none
    assert [(entry["target"], entry["batch"]) for entry in document["results"]] == [("onnx", 1), ("onnx", 2)]
    assert [entry["target"] for entry in accuracy["results"]] == ["onnx"]
    assert {entry["target"] for entry in document["skipped"]} == {"onnx-int8"}
    evaluated = cli("eval", small_export, "--data", "builtin-digits", "--targets", "onnx", "--json", "-")
    assert evaluated.code == 0, evaluated.err
    report = evaluated.json()
    expected = {row["target"]: row for row in report["results"]}  # eval always has torch, the reference
    assert accuracy["images"] == report["data"]["images"] > 300  # the digits validation split
    for entry in accuracy["results"]:
        assert entry["status"] == "ok" and entry["images"] == accuracy["images"]
        assert (entry["top1"], entry["top5"]) == (expected[entry["target"]]["top1"], expected[entry["target"]]["top5"])


def test_bench_data_terminal_table_shows_size_and_accuracy(scored):
    document = scored["document"]
    out = scored["out"]
    header = next(line for line in out.splitlines() if "target" in line and "p50" in line)
    for column in ("file MB", "top-1", "top-5", "p50 ms"):
        assert column in header, header
    (entry,) = document["accuracy"]["results"]
    rows = [line for line in out.splitlines() if line.startswith("│ onnx ")]
    assert len(rows) == 2  # batch 1 and 2, each with the target's one accuracy figure
    for row in rows:
        assert f"{entry['top1']:.2%}" in row and f"{entry['top5']:.2%}" in row, row
    images = document["accuracy"]["images"]
    assert f"accuracy: top-1/top-5 on builtin-digits, {images} labelled images, once per target" in out
    assert f"top-1/top-5: {UNTRAINED_NOTE}" in out.replace("\n", " ")  # the note eval prints, as a footnote


def test_report_shows_accuracy_in_markdown_and_html(cli, scored, tmp_path):
    md, page = tmp_path / "report.md", tmp_path / "report.html"
    result = cli("report", scored["path"], "--md", md, "--html", page)
    assert result.code == 0, result.err
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| device |"))
    assert "| file MB | top-1 | top-5 | eval images | notes |" in header
    images = scored["document"]["accuracy"]["images"]
    (entry,) = scored["document"]["accuracy"]["results"]
    rows = [line for line in text.splitlines() if "| onnx |" in line]
    assert len(rows) == 2
    for row in rows:
        assert f"| {entry['top1']:.2%} | {entry['top5']:.2%} | {images} |" in row, row
        assert "see note" in row
    assert f"top-1/top-5: {UNTRAINED_NOTE}" in text and f"builtin-digits: {images} labelled images" in text
    html = page.read_text()
    assert "<th>top-1</th>" in html and f"<td>{entry['top1']:.2%}</td>" in html


def test_bench_without_data_keeps_its_table(scored):
    """A result without "accuracy" (every result before --data) has no accuracy columns anywhere."""
    from mfdeploy.benchmark.rows import TABLE_COLUMNS, document_rows, table_columns, terminal_cells

    document = {key: value for key, value in scored["document"].items() if key != "accuracy"}
    rows = document_rows(document, "plain")
    assert table_columns(rows) == TABLE_COLUMNS
    header, _, footnotes = terminal_cells(rows)
    assert "top-1" not in header and "file MB" not in header and not any("accuracy" in f for f in footnotes)


def test_bench_refuses_data_the_model_cannot_be_scored_on(cli, small_export, tmp_path):
    for label in range(3):  # 3 classes against the model's 10 outputs without class names
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (80 * label, 40 * i, 90)).save(folder / f"{i}.png")
    result = cli("bench", small_export, "--targets", "onnx", *QUICK, "--data", tmp_path / "data", "--json", "-")
    assert result.code == 1 and "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "has 3 classes" in lines[0] and "10 outputs without class names" in lines[0], lines
    assert list(result.json()) == ["error"]  # refused before any cell: no result, only the error object
    # --size: refused before exporting (a random model with the paper's 1000 classes and no class names)
    result = cli("bench", "--size", "26m", "--imgsz", "64", "--targets", "onnx", "--data", "builtin-digits")
    assert result.code == 1 and "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "1000 outputs without class names" in lines[0], lines


# -- the charts ------------------------------------------------------------------------------------
def test_outlier_rule_on_constructed_latencies():
    limit, clipped = plots.clip_outliers([1.0, 1.2, 0.9, 50.0])
    assert clipped == [3] and limit == pytest.approx(plots.CLIP_HEADROOM * 1.2)
    limit, clipped = plots.clip_outliers([1.0, 1.1, 40.0, 60.0])  # two outliers: each > 5x its others' median
    assert clipped == [2, 3] and limit == pytest.approx(plots.CLIP_HEADROOM * 1.1)
    assert plots.clip_outliers([1.0, 1.0, 5.0]) == (None, [])  # exactly 5x the others' median: kept
    assert plots.clip_outliers([1.0, 4.0, 4.5]) == (None, [])
    assert plots.clip_outliers([1.0, 30.0]) == (None, [])  # two bars: too few to call one an outlier
    assert plots.clip_outliers([0.0, 0.0, 3.0]) == (None, [])  # no median to compare with


def _row(target: str, p50: float, caveat: str | None = None, device: str = "host", batch: int = 1) -> Row:
    return Row(
        device=device,
        model="26m @64px",
        target=target,
        label=target,
        precision="fp32",
        batch=batch,
        p50=p50,
        p90=p50 * 1.1,
        p99=p50 * 1.2,
        mean=p50,
        std=p50 * 0.05,
        n=50,
        throughput=batch * 1e3 / p50,
        gmacs=None,
        first_load_ms=10.0,
        rss_peak_mb=None,
        rss_increase_mb=None,
        gpu_mb=None,
        file_mb=None,
        gpu_compute_p50=None,
        caveat=caveat,
        source="made up",
    )


def test_bar_chart_clips_the_outlier_and_hatches_evaluator_timings():
    rows = [
        _row("torch", 12.0),
        _row("onnx", 3.0),
        _row("onnx-fp16", 3.6),
        _row("coreml", 900.0, caveat="numpy MIL evaluator (no Core ML runtime off macOS)"),
        _row("onnx", 2.5, device="other host"),
    ]
    figure = plots.by_device_figure(rows)
    ax = figure.axes[0]
    assert ax.get_xlim()[1] == pytest.approx(plots.CLIP_HEADROOM * 12.0)
    assert [t.get_text() for t in ax.texts if "clipped" in t.get_text()] == ["900 ms, clipped \u00bb"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_width() == 900.0
    legend = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert f"hatched: {plots.NOT_DEVICE}" in legend
    lines = plots.latency_vs_batch_figure(rows)
    labels = [t.get_text() for legend in lines.legends for t in legend.get_texts()]
    assert f"host | coreml ({plots.NOT_DEVICE})" in labels and "host | torch" in labels
    png = plots.by_device(rows)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.width >= 400
