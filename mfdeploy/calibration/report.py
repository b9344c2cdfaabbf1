"""The human-readable calibration summary (calibration.md) rendered from calibration.json.

Layout, most important first: the verdict (and the untrained-model note), the agreement of the INT8 and
FP16 graphs with FP32, the comparison of the INT8 methods when ``--method all`` ran them, the precision
census of each graph (INT8/FP16/FP32 compute nodes and MAdds, why each FP32 node is FP32), the files and
where each came from; then how the run was made, CPU latency, the FP32 islands of the FP16 graph grouped
by reason (every node with its own measured reason stays in calibration.json) and the INT8 graph, with
the activation ranges that clip most (all of them in calibration.json). The same renderer writes each
method's own report (``calibration/<method>/calibration.md``), which holds that method's INT8 graph only.

The data source is a path the user gave and node and tensor names come from the graph: they go through
:mod:`mfdeploy.markdown`, so a ``<script>`` or a ``[link](...)`` in them is shown, not rendered."""

from __future__ import annotations

from typing import Any

from mfdeploy import markdown as md
from mfdeploy.images.choice import data_name

MAX_RANGE_ROWS = 10


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


def graph_label(report: dict[str, Any], precision: str) -> str:
    """``model.int8.onnx (entropy)``: a graph's file and, for INT8, its method (plain text)."""
    section = report.get(precision, {})
    label = str(section.get("file", precision))
    if precision == "int8" and section.get("method"):
        label += f" ({section['method']}" + (f" {section['percentile']}" if section.get("percentile") else "") + ")"
    return label


def census_line(census: dict[str, Any], base: str | None = None) -> str:
    """``precision census on an FP16 base: compute nodes INT8 57 / FP16 239 / FP32 94, MAdds 91.9% / 8.1% /
    0.0%``: one graph's census, with the INT8 graph's base when given (plain text)."""
    nodes, share = census["nodes"], census["madds_share"]
    order = ("int8", "fp16", "fp32")
    return (
        "precision census"
        + (f" on an {base.upper()} base" if base else "")
        + ": compute nodes "
        + " / ".join(f"{p.upper()} {nodes[p]}" for p in order)
        + ", MAdds "
        + " / ".join(f"{share[p]:.1%}" for p in order)
    )


def _census(report: dict[str, Any]) -> list[str]:
    """Which compute nodes run in INT8, FP16 and FP32 in each graph, and why each FP32 one does."""
    graphs = [(p, report[p]) for p in ("int8", "fp16") if isinstance(report.get(p, {}).get("census"), dict)]
    if not graphs:
        return []
    lines = [
        "## Precision census",
        "",
        "What a strongly typed TensorRT engine runs each compute node in, read off the graph (Q/DQ, Cast and "
        "shape-only nodes are not compute; multiply-adds are those of Conv/MatMul/Gemm at batch 1).",
        "",
        "| graph | base | compute nodes | INT8 | FP16 | FP32 | MAdds INT8 / FP16 / FP32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, section in graphs:
        census = section["census"]
        nodes, share = census["nodes"], census["madds_share"]
        base = section.get("base", "fp16") if precision == "int8" else "fp16"
        lines.append(
            f"| {md.text(graph_label(report, precision))} | {md.text(base)} | {census['compute_nodes']} | "
            f"{nodes['int8']} | {nodes['fp16']} | {nodes['fp32']} | "
            f"{share['int8']:.1%} / {share['fp16']:.1%} / {share['fp32']:.1%} |"
        )
    for precision, section in graphs:
        reasons = section["census"].get("fp32_reasons") or []
        if not reasons:
            continue
        lines += ["", f"Why the FP32 nodes of {md.text(graph_label(report, precision))} are FP32:", ""]
        lines += [f"- {r['nodes']} x {md.text(r['reason'])}" for r in reasons]
    return lines + [""]


def _agreement_rows(report: dict[str, Any]) -> list[str]:
    rows = [
        "| graph | cosine | top-1 agreement | top-5 agreement | max abs error | NaN/Inf |",
        "|---|---|---|---|---|---|",
    ]
    for precision, entry in report["evaluation"]["graphs"].items():
        m = entry["vs_fp32"]
        rows.append(
            f"| {md.text(graph_label(report, precision))} | {m['cosine']:.6f} | {m['top1_agreement']:.1%} | "
            f"{m['top5_agreement']:.1%} | {m['max_abs_error']:.3g} | {m['nan_count'] + m['inf_count']} |"
        )
    return rows


def _comparison(report: dict[str, Any]) -> list[str]:
    """The INT8 methods side by side (``--method all``), and which one model.int8.onnx is and why."""
    selection = report.get("selection")
    if not selection:
        return []
    chosen = selection["chosen"]
    lines = [
        "## INT8 calibration methods compared",
        "",
        f"Each from the one statistics run ({md.code(report['stats']['file'])}), each graph evaluated against FP32 "
        "on the same held-out images. Clipped: the share of calibration values beyond the range, mean and largest "
        "over the quantized tensors.",
        "",
        "| method | cosine | top-1 agreement | top-5 agreement | max abs error | clipped (mean / max) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, entry in report["methods"].items():
        m, clipped = entry["vs_fp32"], entry["clipped_share"]
        name = f"**{md.text(method)}** (installed)" if method == chosen else md.text(method)
        lines.append(
            f"| {name} | {m['cosine']:.6f} | {m['top1_agreement']:.1%} | {m['top5_agreement']:.1%} | "
            f"{m['max_abs_error']:.3g} | {clipped['mean']:.3%} / {clipped['max']:.3%} | "
            f"{'PASS' if entry['verdict'] == 'passed' else 'FAIL'} |"
        )
    lines += ["", f"**model.int8.onnx is {md.text(chosen)}**, chosen by {md.text(selection['metric'])}: "]
    lines[-1] += md.text(selection["why"]) + "."
    lines += ["", "Ties on the metric go to " + md.text(", then ".join(selection["tie_break"])) + "."]
    if selection.get("note"):
        lines += ["", f"Note: {md.text(selection['note'])}."]
    return lines + [""]


def _provenance(section: dict[str, Any]) -> str:
    """`calibrated <when> on <data>`, as far as the section records it (an older mfdeploy's may not)."""
    data = section.get("data") if isinstance(section.get("data"), dict) else {}
    when = f" {section['created']}" if section.get("created") else ""
    on = f" on {md.text(data.get('source'))}, {data.get('images')} images" if data else ""
    return f"calibrated{when}{on}" if when or on else ""


def _kept_note(section: dict[str, Any]) -> str:
    known = _provenance(section)
    return "; kept from an earlier run" + (f" ({known})" if known else "") + ", evaluated again now"


def _files(report: dict[str, Any]) -> list[str]:
    lines = ["## Files", ""]
    if "int8" in report:
        int8 = report["int8"]
        line = f"- {md.code(int8['file'])}: INT8, method **{md.text(int8.get('method') or 'unknown')}**"
        if int8.get("source") and int8["source"] != int8["file"]:
            line += f", a copy of {md.code(int8['source'])}"
        line += " (the graph TensorRT builds from)"
        if int8.get("kept"):
            line += _kept_note(int8)
        lines.append(line + ".")
    if "fp16" in report:
        fp16 = report["fp16"]
        count = _island_count(fp16)
        line = f"- {md.code(fp16['file'])}: FP16" + (f" with {count} FP32 islands" if count is not None else "")
        line += "; it does not depend on the INT8 method"
        if fp16.get("kept"):
            line += _kept_note(fp16)
        lines.append(line + ".")
    method_files = report.get("method_files") or {}
    if method_files:
        lines += ["", "Each INT8 method's own graph and report (`mfdeploy calibrate --method M` remakes one):", ""]
        for method, entry in method_files.items():
            when = "this run" if entry.get("this_run") else (_provenance(entry) or "an earlier run")
            lines.append(
                f"- {md.text(method)}: {md.code(entry.get('graph'))}, {md.code(entry.get('report'))} "
                f"and its .md ({when})"
            )
    return lines + [""]


def _latency_rows(report: dict[str, Any]) -> list[str]:
    evaluation = report["evaluation"]
    latency = evaluation.get("ort_cpu_latency_ms")
    if not latency:
        return ["(latency not measured)"]
    batches = list(next(iter(latency.values())))
    rows = ["| graph | " + " | ".join(f"batch {b[1:]} (ms)" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for precision, values in latency.items():
        label = "model.onnx (FP32)" if precision == "fp32" else graph_label(report, precision)
        rows.append(f"| {md.text(label)} | " + " | ".join(f"{values[b]:.2f}" for b in batches) + " |")
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


def _island_count(section: dict[str, Any]) -> int | None:
    islands = section.get("fp32_islands")
    return len(islands) if isinstance(islands, list) else section.get("fp32_island_count")


def _fp16_section(fp16: dict[str, Any]) -> list[str]:
    count = _island_count(fp16)
    lines = ["## FP16 graph: FP32 islands", ""]
    groups = fp16.get("fp32_island_groups")
    if not isinstance(groups, list):  # kept from a run whose report is no longer intact
        known = f"{count} nodes stay FP32" if count is not None else "This graph's FP32 islands are not known here"
        return lines + [f"{known}; `mfdeploy calibrate --precision fp16` lists them again.", ""]
    lines += [
        f"{count} nodes stay FP32, grouped by reason (each node with the values measured on it: "
        "`fp16.fp32_islands` in calibration.json).",
        "",
        "| reason | nodes | for example |",
        "|---|---|---|",
    ]
    for group in groups:
        examples = ", ".join(md.code(name, in_table=True) for name in group["examples"])
        more = ", ..." if group["nodes"] > len(group["examples"]) else ""
        lines.append(f"| {md.text(group['reason'])} | {group['nodes']} | {examples}{more} |")
    return lines + [""]


def _int8_section(int8: dict[str, Any]) -> list[str]:
    method = int8.get("method") or "unknown"
    lines = [f"## INT8 graph ({md.text(method)})", ""]
    if "activation_ranges" not in int8:
        return lines + ["Kept from an earlier run; its ranges are in that method's own calibration.json.", ""]
    ranges = sorted(int8["activation_ranges"].items(), key=lambda kv: -kv[1]["clipped_share"])
    lines += [
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
        f"Activation ranges: the {min(MAX_RANGE_ROWS, len(ranges))} of {len(ranges)} that clip the largest share "
        "(every one in calibration.json, `int8.activation_ranges`):",
        "",
        "| tensor | threshold | scale | max abs seen | clipped |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {md.code(name, in_table=True)} | {r['threshold']:.4g} | {r['scale']:.4g} | {r['absmax']:.4g} | "
        f"{r['clipped_share']:.3%} |"
        for name, r in ranges[:MAX_RANGE_ROWS]
    ]
    return lines + [""]


def _run_lines(report: dict[str, Any]) -> list[str]:
    data, run = report["data"], report.get("run")
    if run is None:  # one method's own report
        method = f"**{md.text(report['method'])}**" + (
            f" (percentile {report['percentile']})" if report.get("percentile") else ""
        )
    elif run["method"] == "all":
        method = f"**all** ({', '.join(report['methods'])}), the installed one chosen by {md.text(run['select'])}"
    else:
        method = f"**{md.text(run['method'])}**" + (
            f" (percentile {run['percentile']})" if run.get("percentile") else ""
        )
    lines = [
        "## Calibration run",
        "",
        f"- method: {method}",
        f"- data: {md.text(data_name(data))}, {data['images']} images, "
        f"sha256 {md.code(str(data['sha256'])[:16] + '...')}"
        + (f", {data['skipped_files']} unreadable files skipped" if data.get("skipped_files") else ""),
        f"- statistics: {md.code(report['stats']['file'])}"
        + (" (reused from cache, the model was not run again)" if report["stats"]["reused"] else " (collected now)"),
        f"- created {report['created']}"
        + (
            f", {report['seconds']:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in report.get("timings_s", {}).items())
            + ")"
            if "seconds" in report
            else ""
        ),
        "",
    ]
    return lines


def render_markdown(report: dict[str, Any], artifact: Any) -> str:
    own = report.get("run") is None  # one method's own report, beside its graph
    title = f"# Calibration report: Mobile-Former {md.text(artifact.size)}"
    if own:
        title = f"# INT8 calibration with {md.text(report['method'])}: Mobile-Former {md.text(artifact.size)}"
    lines = [
        title,
        "",
        *_verdict_paragraphs(report),
        "",
        "## Agreement with FP32 on held-out images",
        "",
        f"{report['evaluation']['holdout_images']} images ({md.text(data_name(report.get('holdout') or {}))}) that "
        "were not part of the calibration set.",
        "",
        *_agreement_rows(report),
        "",
        *_comparison(report),
        *_census(report),
    ]
    if not own:
        lines += _files(report)
    lines += [
        *_run_lines(report),
        "## ONNX Runtime CPU latency (median)",
        "",
        *_latency_rows(report),
        "",
    ]
    if "fp16" in report:
        lines += _fp16_section(report["fp16"])
    if "int8" in report:
        lines += _int8_section(report["int8"])
    return "\n".join(lines)
