"""The human summaries of `export` and `calibrate`: what was written, what was checked, how long it took."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_export_summary(result: Any, say_to: Console) -> None:
    m = result.manifest

    def say(text: str) -> None:
        say_to.print(text, soft_wrap=True, markup=False)

    graph, model, verification = m["onnx"], m["model"], m["verification"]["onnx"]
    source = model["source"]
    weights = f"random weights, seed {source['seed']}" if source["weights"] == "random" else source["weights"]
    batch = "dynamic batch" if graph["dynamic_batch"] else f"batch {graph['batch']}"
    say(f"exported Mobile-Former {model['size']} ({weights}) to {result.artifact / graph['file']}")
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
    t = result.timings
    say(f"  took {t['total']:.1f} s (export {t['export']:.1f}, simplify {t['simplify']:.1f}, verify {t['verify']:.1f})")


def print_calibration_summary(artifact: Any, report: dict[str, Any], say_to: Console) -> None:
    from mfdeploy.artifacts import CALIBRATION_JSON, CALIBRATION_MD
    from mfdeploy.calibration.report import verdict_lines
    from mfdeploy.images.choice import data_name

    def say(text: str) -> None:
        say_to.print(text, soft_wrap=True, markup=False)

    data, stats = report["data"], report["stats"]
    reused = (
        "reused cached statistics" if stats["reused"] else f"collected statistics in {stats['collect_seconds']:.1f} s"
    )
    say(
        f"calibrated Mobile-Former {artifact.size} with {report['method']}"
        + (f" {report['percentile']}" if report.get("percentile") else "")
        + f" on {data['images']} images from {data_name(data)} ({reused})"
    )
    held_out = f" of {data_name(report['holdout'])}" if report.get("holdout") else ""
    for precision, entry in report["evaluation"]["graphs"].items():
        m = entry["vs_fp32"]
        extra = ""
        if precision == "fp16":
            extra = f", {len(report['fp16']['fp32_islands'])} FP32 islands"
        if precision == "int8":
            extra = f", {report['int8']['quantized_nodes']} quantized ops"
        say(
            f"  {artifact.path(report[precision]['file'])}: vs FP32 on {m['samples']} held-out images{held_out} "
            f"cosine {m['cosine']:.5f}, max abs error {m['max_abs_error']:.3g}, top-1 {m['top1_agreement']:.1%}, "
            f"top-5 {m['top5_agreement']:.1%}{extra}"
        )
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
    say(f"  report: {artifact.path(CALIBRATION_MD)} and {CALIBRATION_JSON} ({report['seconds']:.1f} s)")
