"""The human summaries of `export` and `calibrate`: what was written, what was checked, how long it took."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from mfdeploy.fileio import display_path


def print_export_summary(result: Any, say_to: Console) -> None:
    m = result.manifest

    def say(text: str) -> None:
        say_to.print(text, soft_wrap=True, markup=False)

    if result.mode == "unchanged":
        say(result.message)
        return
    graph, model, verification = m["onnx"], m["model"], m["verification"]["onnx"]
    source = model["source"]
    weights = f"random weights, seed {source['seed']}" if source["weights"] == "random" else source["weights"]
    if source.get("ema") is True:
        weights += ", EMA weights"
    batch = "dynamic batch" if graph["dynamic_batch"] else f"batch {graph['batch']}"
    family = "official " if model.get("family") == "official" else ""
    if result.mode == "grow":
        say(result.message)
        say(f"  {family}Mobile-Former {model['size']} ({weights}); {graph['file']} as verified at its export")
    else:
        graph_path = display_path(result.artifact / graph["file"])
        say(f"exported {family}Mobile-Former {model['size']} ({weights}) to {graph_path}")
        if result.message:
            say(f"  {result.message}")
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
            f"max abs error {verification['worst_max_abs_error']:.2e} on logits up to "
            f"{max(c['scale'] for c in cases):.4g} (limit {verification['atol']:g} + {verification['rtol']:g} x the "
            f"largest |logit|, at most {max(c['limit'] for c in cases):.3g}), top-1 identical"
        )
    for line in precision_graph_lines(m, result.timings):
        say(f"  {line}")
    say(f"  took {result.timings['total']:.1f} s ({time_splits(result.timings, m)})")


def precision_graph_lines(manifest: dict[str, Any], timings: dict[str, float]) -> list[str]:
    """The TensorRT precision graph this export calibrated or kept: its agreement with FP32 and verdict."""
    if "trt" not in timings:
        return []
    trt = manifest.get("tensorrt") or {}
    calibration = manifest.get("calibration") or {}
    agreement = (calibration.get("agreement") or {}).get(trt.get("precision"))
    if not agreement:
        lines = [f"TensorRT graph: {trt.get('graph')} ({trt.get('precision')}), lint passed"]
    else:
        lines = [
            f"TensorRT graph: {trt.get('graph')} vs FP32 on {agreement['samples']} held-out images: cosine "
            f"{agreement['cosine']:.5f}, top-1 {agreement['top1_agreement']:.1%}, "
            f"top-5 {agreement['top5_agreement']:.1%} (calibration verdict: {calibration.get('verdict', '?')}), "
            "lint passed"
        ]
    census = (calibration.get(trt.get("precision")) or {}).get("census")
    if isinstance(census, dict) and isinstance(census.get("nodes"), dict):
        from mfdeploy.calibration.report import census_line

        base = (calibration.get("int8") or {}).get("base") if trt.get("precision") == "int8" else None
        lines.append(f"  {census_line(census, base)}")
    return lines


def time_splits(timings: dict[str, float], manifest: dict[str, Any]) -> str:
    """Every step that ran, in order, with the stages' own steps in brackets (what a slow export spent its time on)."""
    inner = {
        "trt": (manifest.get("tensorrt") or {}).get("timings_s") or {},
        "coreml": (manifest.get("coreml") or {}).get("timings_s") or {},
    }
    parts = []
    for step, seconds in timings.items():
        if step == "total":
            continue
        detail = inner.get(step) or {}
        more = ", ".join(f"{name.removesuffix('_s')} {value:.1f}" for name, value in detail.items())
        parts.append(f"{step} {seconds:.1f}" + (f" [{more}]" if more else ""))
    return ", ".join(parts)


def print_calibration_summary(artifact: Any, report: dict[str, Any], say_to: Console) -> None:
    from mfdeploy.artifacts import CALIBRATION_DIR, CALIBRATION_JSON, CALIBRATION_MD
    from mfdeploy.calibration.report import census_line, graph_label, verdict_lines
    from mfdeploy.images.choice import data_name

    def say(text: str) -> None:
        say_to.print(text, soft_wrap=True, markup=False, highlight=False)

    data, stats, run = report["data"], report["stats"], report["run"]
    reused = (
        "reused cached statistics" if stats["reused"] else f"collected statistics in {stats['collect_seconds']:.1f} s"
    )
    if run["method"] == "all":
        what = f"INT8 by {', '.join(report['methods'])} (--method all)"
    elif "int8" in run["precisions"]:
        what = f"with {run['method']}" + (f" {run['percentile']}" if run.get("percentile") else "")
    else:
        what = "FP16"
    say(f"calibrated Mobile-Former {artifact.size} {what} on {data['images']} images from {data_name(data)} ({reused})")
    selection = report.get("selection")
    holdout = report["evaluation"]["holdout_images"]
    if selection:
        say(
            f"  INT8 methods vs FP32 on {holdout} held-out images "
            f"(each graph and report in {CALIBRATION_DIR}/<method>/):"
        )
        say(f"    {'method':<12} {'cosine':>8} {'top-1':>7} {'top-5':>7} {'max abs error':>14}  clipped mean / max")
        for method, entry in report["methods"].items():
            m, clipped = entry["vs_fp32"], entry["clipped_share"]
            mark = "*" if method == selection["chosen"] else " "
            say(
                f"  {mark} {method:<12} {m['cosine']:>8.6f} {m['top1_agreement']:>7.1%} {m['top5_agreement']:>7.1%} "
                f"{m['max_abs_error']:>14.3g}  {clipped['mean']:.3%} / {clipped['max']:.3%}"
            )
        say(f"  model.int8.onnx is {selection['chosen']}, chosen by --select {selection['metric']}: {selection['why']}")
        if selection.get("note"):
            say(f"  note: {selection['note']}")
    held_out = f" of {data_name(report['holdout'])}" if report.get("holdout") else ""
    for precision, entry in report["evaluation"]["graphs"].items():
        m = entry["vs_fp32"]
        section = report[precision]
        extra = ""
        if precision == "fp16" and isinstance(section.get("fp32_islands"), list):
            groups = len(section.get("fp32_island_groups") or [])
            extra = f", {len(section['fp32_islands'])} FP32 islands ({groups} reasons)"
        if precision == "int8" and section.get("quantized_nodes"):
            extra = f", {section['quantized_nodes']} quantized ops"
        if section.get("kept"):
            extra += ", kept from an earlier run"
        label = graph_label(report, precision).replace(section["file"], display_path(artifact.path(section["file"])), 1)
        say(
            f"  {label}: vs FP32 on {m['samples']} held-out images{held_out} "
            f"cosine {m['cosine']:.5f}, max abs error {m['max_abs_error']:.3g}, top-1 {m['top1_agreement']:.1%}, "
            f"top-5 {m['top5_agreement']:.1%}{extra}"
        )
        if isinstance(section.get("census"), dict):
            say(f"    {census_line(section['census'], section.get('base', 'fp16') if precision == 'int8' else None)}")
        if "cpu_slower_than_fp32" in entry:
            say(f"  note: {precision} is slower than FP32 on this CPU: {entry['cpu_slower_than_fp32']['why']}")
    latency = report["evaluation"].get("ort_cpu_latency_ms")
    if latency:
        say(
            "  ONNX Runtime CPU median latency: "
            + "; ".join(
                f"{p} " + "/".join(f"{v:.2f}" for v in values.values()) + " ms (b1/b8)" for p, values in latency.items()
            )
        )
    for line in verdict_lines(report):
        say(f"  {line}")
    say(f"  report: {display_path(artifact.path(CALIBRATION_MD))} and {CALIBRATION_JSON} ({report['seconds']:.1f} s)")
