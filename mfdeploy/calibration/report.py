"""The human-readable calibration summary (calibration.md) rendered from calibration.json.

The data source is a path the user gave and node and tensor names come from the graph: they go through
:mod:`mfdeploy.markdown`, so a ``<script>`` or a ``[link](...)`` in them is shown, not rendered."""

from __future__ import annotations

from typing import Any

from mfdeploy import markdown as md
from mfdeploy.images.choice import data_name

MAX_RANGE_ROWS = 25


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """The verdict per precision and overall, why calibrate still exits 0 when it fails, and the untrained
    note: plain text from mfdeploy's own names and numbers, shared by calibration.md and the summary."""
    verdict = report["verdict"]
    parts = []
    for precision, entry in verdict["precisions"].items():
        failures = "; ".join(f["text"] for f in entry["failures"])
        parts.append(
            f"{precision} {'PASS' if entry['status'] == 'passed' else 'FAIL'}" + (f" ({failures})" if failures else "")
        )
    lines = [
        f"verdict: {'PASS' if verdict['passed'] else 'FAIL'}: {', '.join(parts)}, against the thresholds "
        f"`mfdeploy parity` uses, vs {verdict['reference']}"
    ]
    if not verdict["passed"]:
        lines.append(f"the verdict is {verdict['note']}")
    if report.get("untrained_note"):
        lines.append(f"note: {report['untrained_note']}")
    return lines


def _agreement_rows(evaluation: dict[str, Any]) -> list[str]:
    rows = [
        "| graph | cosine | max abs error | top-1 agreement | top-5 agreement | NaN/Inf |",
        "|---|---|---|---|---|---|",
    ]
    for precision, entry in evaluation["graphs"].items():
        m = entry["vs_fp32"]
        rows.append(
            f"| {md.text(precision)} | {m['cosine']:.6f} | {m['max_abs_error']:.3g} | {m['top1_agreement']:.1%} | "
            f"{m['top5_agreement']:.1%} | {m['nan_count'] + m['inf_count']} |"
        )
    return rows


def _latency_rows(evaluation: dict[str, Any]) -> list[str]:
    latency = evaluation.get("ort_cpu_latency_ms")
    if not latency:
        return ["(latency not measured)"]
    batches = list(next(iter(latency.values())))
    rows = ["| graph | " + " | ".join(f"batch {b[1:]} (ms)" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for precision, values in latency.items():
        rows.append(f"| {md.text(precision)} | " + " | ".join(f"{values[b]:.2f}" for b in batches) + " |")
    notes = []
    for precision, entry in evaluation["graphs"].items():
        slower = entry.get("cpu_slower_than_fp32")
        if slower:
            batches = ", ".join(map(str, slower["batches"]))
            notes.append(
                f"- {md.text(precision)} is slower than FP32 on the CPU at batch {batches}: {md.text(slower['why'])}."
            )
    return rows + ([""] + notes if notes else [])


def _verdict_paragraphs(report: dict[str, Any]) -> list[str]:
    """The verdict first, in bold, then the lines that qualify it, one paragraph each."""
    first, *rest = (line[0].upper() + line[1:] + "." for line in verdict_lines(report))
    paragraphs = [f"**{first}**"]
    for line in rest:
        paragraphs += ["", line]
    return paragraphs


def render_markdown(report: dict[str, Any], artifact: Any) -> str:
    data = report["data"]
    lines = [
        f"# Calibration report: Mobile-Former {md.text(artifact.size)}",
        "",
        *_verdict_paragraphs(report),
        "",
        f"- method: **{md.text(report['method'])}**"
        + (f" (percentile {report['percentile']})" if report.get("percentile") else ""),
        f"- data: {md.text(data_name(data))}, {data['images']} images, "
        f"sha256 {md.code(str(data['sha256'])[:16] + '...')}"
        + (f", {data['skipped_files']} unreadable files skipped" if data.get("skipped_files") else ""),
        f"- statistics: {md.code(report['stats']['file'])}"
        + (" (reused from cache, the model was not run again)" if report["stats"]["reused"] else " (collected now)"),
        f"- created {report['created']}, {report['seconds']:.1f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in report.get("timings_s", {}).items())
        + ")",
        "",
        "## Agreement with FP32 on held-out images",
        "",
        f"{report['evaluation']['holdout_images']} images ({md.text(data_name(report.get('holdout') or {}))}) that "
        "were not part of the calibration set.",
        "",
        *_agreement_rows(report["evaluation"]),
        "",
        "## ONNX Runtime CPU latency (median)",
        "",
        *_latency_rows(report["evaluation"]),
        "",
    ]
    if "fp16" in report:
        islands = report["fp16"]["fp32_islands"]
        lines += [
            "## FP16 graph: FP32 islands",
            "",
            f"{len(islands)} nodes stay FP32.",
            "",
            "| node | op | reason |",
            "|---|---|---|",
        ]
        lines += [
            f"| {md.code(i['node'], in_table=True)} | {md.text(i['op_type'])} | {md.text(i['reason'])} |"
            for i in islands
        ]
        lines.append("")
    if "int8" in report:
        int8 = report["int8"]
        ranges = sorted(int8["activation_ranges"].items(), key=lambda kv: -kv[1]["clipped_share"])
        lines += [
            "## INT8 graph",
            "",
            f"{int8['quantized_nodes']} Conv/MatMul/Gemm nodes quantized; weights {md.text(int8['weights'])}; "
            f"activations {md.text(int8['activations'])}. {len(int8['float_nodes'])} stay float:",
            "",
        ]
        reasons: dict[str, int] = {}
        for reason in int8["float_nodes"].values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"- {count} x {md.text(reason)}" for reason, count in reasons.items()]
        if int8.get("guarded_ranges"):
            lines += [
                "",
                f"{int8['guarded_ranges']} entropy thresholds would have clipped more than 0.1% of the calibration "
                "values (spiky histograms: saturated or constant regions) and were raised to clip at most 0.1%; "
                "`raised_from` in calibration.json gives the KL threshold each replaced.",
            ]
        lines += [
            "",
            f"Activation ranges (top {min(MAX_RANGE_ROWS, len(ranges))} of {len(ranges)} by share clipped; "
            "all of them in calibration.json):",
            "",
            "| tensor | threshold | scale | max abs seen | clipped |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {md.code(name, in_table=True)} | {r['threshold']:.4g} | {r['scale']:.4g} | {r['absmax']:.4g} | "
            f"{r['clipped_share']:.3%} |"
            for name, r in ranges[:MAX_RANGE_ROWS]
        ]
        lines.append("")
    return "\n".join(lines)
