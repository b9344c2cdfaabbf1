"""Parity reports: JSON (the dict from the harness, ``schema_version`` 1), Markdown, HTML with a plot of
the error per stage, and the terminal summary.

JSON schema (version 1), top level: schema_version, created, artifact, model {size, num_classes, imgsz,
source, trained_on}, data {source, images, shape, sha256, skipped_files, split (builtin-digits only), used, origin
(given | trained_on: the model's training record | default), note (why a training record was not
followed, or null)}, batch, reference, untrained (the manifest records random weights), untrained_note
(why its agreement figures mean nothing; null when trained), default_thresholds {fp32|fp16|int8:
{max_abs_error, min_cosine, min_top1, min_top5, stage_rel_error}} as applied to this model
(min_top1/min_top5 null: not gated, an untrained model), overrides, stage_comparison, stage_mapping
{stage: onnx tensor}, results [...], passed, failed_targets, seconds, versions. Each result: target,
backend, precision, status (passed | failed | skipped); skipped ones have reason; the others label,
thresholds, figures {max_abs_error, mean_abs_error, max_rel_error, cosine, top1_agreement,
top5_agreement, nan_count, inf_count, samples}, failures [{metric, value, limit, text}], seconds, and
(when localised) stages {rel_error {stage: value}, limit, first_parting {stage, rel_error, limit, growth
[{stage, rel_error}]}} or stages {unavailable: reason}.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from mfdeploy import markdown as md
from mfdeploy.images.choice import data_name


def _row(result: dict[str, Any]) -> list[str]:
    if result["status"] == "skipped":
        return [result["target"], result["precision"], "skipped", "", "", "", "", "", result["reason"]]
    f = result["figures"]
    verdict = "PASS" if result["status"] == "passed" else "FAIL"
    detail = "; ".join(x["text"] for x in result["failures"])
    parting = (result.get("stages") or {}).get("first_parting")
    if parting:
        detail = (detail + "; " if detail else "") + f"first parts at {parting['stage']}"
    return [
        result["target"],
        result["precision"],
        verdict,
        f"{f['max_abs_error']:.3g}",
        f"{f['mean_abs_error']:.3g}",
        f"{f['cosine']:.6f}",
        f"{f['top1_agreement']:.1%}",
        f"{f['top5_agreement']:.1%}",
        detail or result.get("label", ""),
    ]


HEADER = ["target", "precision", "verdict", "max abs err", "mean abs err", "cosine", "top-1", "top-5", "details"]


def _skipped_note(data: dict[str, Any]) -> str:
    """How many unreadable files the data left out, worded as calibration.md words it."""
    return f", {data['skipped_files']} unreadable files skipped" if data.get("skipped_files") else ""


def _limit(value: float | None, untrained: bool) -> str:
    """A top-k limit as the reports print it: None means not gated, which only an untrained model gets."""
    if value is not None:
        return f">= {value}"
    return "not gated (untrained model)" if untrained else "not gated"


def threshold_lines(report: dict[str, Any]) -> list[str]:
    """One line per precision with the limits this run judged by (mfdeploy's own names and numbers)."""
    untrained = bool(report.get("untrained"))
    lines = []
    for precision, t in report["default_thresholds"].items():
        max_abs = t["max_abs_error"] if t["max_abs_error"] is not None else "not checked"
        lines.append(
            f"{precision}: max abs error {max_abs}, cosine >= {t['min_cosine']}, "
            f"top-1 {_limit(t['min_top1'], untrained)}, top-5 {_limit(t['min_top5'], untrained)}, "
            f"stage relative error <= {t['stage_rel_error']}"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    """parity.md: every string from the user or a backend (paths, data source, reasons) goes through
    :mod:`mfdeploy.markdown`, so it renders as text, never as HTML, a link or a table column."""
    model, data = report["model"], report["data"]
    lines = [
        f"# Parity report: Mobile-Former {md.text(model['size'])} ({md.text(report['artifact'])})",
        "",
        f"Reference: {md.text(report['reference'])}. Data: {md.text(data_name(data))}, {md.text(data['used'])} "
        f"images (sha256 {md.code(str(data['sha256'])[:16] + '...')}{_skipped_note(data)}), "
        f"batch {md.text(report['batch'])}. "
        f"Overall: **{'PASS' if report['passed'] else 'FAIL'}**.",
        *(["", f"Note: {report['untrained_note']}."] if report.get("untrained_note") else []),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(md.text(cell) for cell in _row(r)) + " |" for r in report["results"]]
    staged = [r for r in report["results"] if (r.get("stages") or {}).get("rel_error")]
    if staged:
        lines += _stage_lines(report, staged)
    lines += ["", "Thresholds per precision:", ""]
    lines += [f"- {line}" for line in threshold_lines(report)]  # numbers and mfdeploy's own names: no escaping
    if report["overrides"]:
        lines.append(f"- overridden for this run: {md.text(report['overrides'])}")
    return "\n".join(lines) + "\n"


def _stage_lines(report: dict[str, Any], staged: list[dict[str, Any]]) -> list[str]:
    """The error-per-stage table and where each localised backend first parts from PyTorch."""
    stage_names = list(next(iter(staged))["stages"]["rel_error"])
    lines = ["", "## Error per stage (relative L2 against PyTorch)", "", md.text(report["stage_comparison"]) + ".", ""]
    lines.append("| stage | " + " | ".join(md.text(r["target"]) for r in staged) + " |")
    lines.append("|---|" + "---|" * len(staged))
    for stage in stage_names:
        cells = [f"{r['stages']['rel_error'].get(stage, float('nan')):.3g}" for r in staged]
        lines.append(f"| {md.text(stage)} | " + " | ".join(cells) + " |")
    for r in staged:
        parting = r["stages"]["first_parting"]
        if parting:
            growth = ", ".join(f"{g['stage']} {g['rel_error']:.3g}" for g in parting["growth"][:6])
            lines.append("")
            lines.append(
                f"- {md.text(r['target'])} first parts from PyTorch at **{md.text(parting['stage'])}** (relative "
                f"error {parting['rel_error']:.3g} > {parting['limit']:.3g}); from there: {md.text(growth)}"
            )
    return lines


def stage_plot_png(report: dict[str, Any]) -> bytes | None:
    """Relative error per stage, one line per localised backend (log scale); None if nothing to plot."""
    staged = [r for r in report["results"] if (r.get("stages") or {}).get("rel_error")]
    if not staged:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.5), dpi=100)
    for result in staged:
        errors = result["stages"]["rel_error"]
        values = [max(v, 1e-12) if v != float("inf") else 1e3 for v in errors.values()]
        axis.plot(range(len(values)), values, marker="o", label=f"{result['target']} ({result['precision']})")
        axis.axhline(result["stages"]["limit"], linestyle=":", linewidth=1, color=axis.lines[-1].get_color())
    names = list(staged[0]["stages"]["rel_error"])
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("relative L2 error vs PyTorch")
    axis.set_title(f"Mobile-Former {report['model']['size']}: error per stage (dotted: each backend's limit)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def html_report(report: dict[str, Any]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _row(r)) + "</tr>" for r in report["results"]
    )
    png = stage_plot_png(report)
    plot = (
        f"<h2>Error per stage</h2><p>{html.escape(report['stage_comparison'])}.</p>"
        f'<img alt="relative error per stage" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png
        else "<p>No stage comparison in this run (use --layers).</p>"
    )
    verdict = "PASS" if report["passed"] else "FAIL"
    note = (
        f"<p><strong>Note:</strong> {html.escape(report['untrained_note'])}.</p>"
        if report.get("untrained_note")
        else ""
    )
    limits = "".join(f"<li>{html.escape(line)}</li>" for line in threshold_lines(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mfdeploy parity</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style></head><body>"
        f"<h1>Parity: Mobile-Former {html.escape(str(report['model']['size']))} &mdash; {verdict}</h1>"
        f"<p>Reference: {html.escape(report['reference'])}; data: {html.escape(data_name(report['data']))}, "
        f"{report['data']['used']} images.</p>{note}"
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in HEADER) + f"</tr>{rows}</table>"
        f"<h2>Thresholds per precision</h2><ul>{limits}</ul>{plot}"
        "</body></html>\n"
    )


def terminal_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"parity of {report['artifact']} against {report['reference']} on {report['data']['used']} images of "
        f"{data_name(report['data'])}:"
    ]
    for result in report["results"]:
        row = _row(result)
        if result["status"] == "skipped":
            lines.append(f"  {row[0]:<10} skipped: {result['reason']}")
            continue
        lines.append(
            f"  {row[0]:<10} {row[2]:<4} {row[1]:<5} max abs {row[3]:<9} cosine {row[5]} top-1 {row[6]} "
            f"top-5 {row[7]}  {row[8]}"
        )
        parting = (result.get("stages") or {}).get("first_parting")
        if parting:
            growth = " -> ".join(f"{g['stage']} {g['rel_error']:.2g}" for g in parting["growth"][:5])
            lines.append(f"             error grows from {growth}")
    if report.get("untrained_note"):
        lines.append(f"note: {report['untrained_note']}")
    lines.append("overall: " + ("PASS" if report["passed"] else f"FAIL ({', '.join(report['failed_targets'])})"))
    return lines
