"""How far the INT8 and FP16 graphs are from FP32, and what they cost on ONNX Runtime's CPU provider.

Accuracy is measured on held-out images (never part of the calibration set) as agreement with the FP32
graph, and judged against the thresholds `mfdeploy parity` uses (mfdeploy.thresholds, with its rule for
an untrained model). The verdict is reported, never enforced: the graphs are written either way, and
parity is the gate. Latency is measured here only to say what a CPU user would see: the graphs are built for
TensorRT, and when a Q/DQ graph is slower on the CPU the report says why, from ONNX Runtime's own
optimized graph (which Q/DQ pairs it fused into integer kernels and which it runs as separate ops).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner, optimized_op_counts
from mfdeploy.runtime.timing import TimingPlan, time_calls, warm_up
from mfdeploy.thresholds import judge, thresholds_for

LATENCY_BATCHES = (1, 8)
LATENCY_WARMUP = 5
VERDICT_NOTE = (
    "reported, not enforced: calibrate exits 0 whatever the verdict (the graphs are written); "
    "`mfdeploy parity` is the gate"
)
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat")


def _median_latency_ms(runner: OnnxRuntimeRunner, holdout: np.ndarray, runs: int) -> dict[str, float]:
    """Median milliseconds of one ``runner.run`` per batch size in LATENCY_BATCHES, ``{"b1": ..., "b8": ...}``."""
    plan = TimingPlan(warmup=LATENCY_WARMUP, runs=runs)
    latency = {}
    for batch in LATENCY_BATCHES:
        images = np.ascontiguousarray(holdout[:batch], dtype=np.float32)
        warm_up(runner.run, images, plan.warmup)
        latency[f"b{batch}"] = round(statistics.median(time_calls(runner.run, images, plan)), 3)
    return latency


def explain_cpu_slowdown(precision: str, ops: Counter[str], quantized_ops: int) -> str:
    """A data-driven reason why a TensorRT-oriented graph runs slower on ONNX Runtime's CPU provider."""
    if precision == "int8":
        fused = sum(ops[k] for k in INTEGER_KERNELS)
        loose = ops["QuantizeLinear"] + ops["DequantizeLinear"]
        return (
            f"ONNX Runtime's CPU provider fused {fused} of the {quantized_ops} quantized ops into integer "
            f"kernels and runs {loose} QuantizeLinear/DequantizeLinear nodes on their own, each a full pass over "
            "its tensor, around float kernels; TensorRT fuses every Q/DQ pair into its INT8 kernels, so this CPU "
            "figure says nothing about TensorRT speed"
        )
    casts = ops["Cast"]
    return (
        f"ONNX Runtime's x86 CPU provider has few FP16 kernels: it runs {casts} Cast nodes (island borders plus "
        "the casts it inserts around ops it can only run in FP32); on GPUs FP16 is native"
    )


def evaluate_graphs(
    fp32: Path,
    graphs: dict[str, Path],
    holdout: np.ndarray,
    quantized_ops: int,
    threads: int | None = None,
    measure_latency: bool = True,
    runs: int = 20,
    precisions: dict[str, str] | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Agreement with FP32 on ``holdout`` and ORT CPU latency at batch 1 and 8, per graph of ``graphs``
    (label -> path); ``precisions`` gives a label's precision where the label is not one (e.g. one INT8
    graph per calibration method). ``step`` (a progress row's, see :func:`evaluation_steps`) is told each
    step as it starts."""
    precisions = precisions or {}
    step = step or (lambda status: None)
    result: dict[str, Any] = {"holdout_images": int(len(holdout)), "graphs": {}}
    latency: dict[str, dict[str, float]] = {}
    whole = max(1, len(holdout))  # the holdout in one batch
    timed = f"ONNX Runtime CPU latency at batch {'/'.join(map(str, LATENCY_BATCHES))}"
    with OnnxRuntimeRunner(fp32, threads=threads) as reference_runner:
        step(f"FP32 reference on {len(holdout)} held-out images")
        reference = reference_runner.infer_all(holdout, whole)
        if measure_latency:
            step(f"fp32: {timed}")
            latency["fp32"] = _median_latency_ms(reference_runner, holdout, runs)
    candidates = (OnnxRuntimeRunner(path, threads=threads) for path in graphs.values())
    labels = iter(graphs)  # run_targets announces each candidate as it loads: name it by its label
    announce = lambda _label: step(f"{next(labels)} vs FP32")  # noqa: E731
    compared = run_targets(reference, candidates, holdout, whole, announce=announce)
    for precision, run in zip(graphs, compared, strict=True):
        entry: dict[str, Any] = {"vs_fp32": run.figures}
        if measure_latency:
            step(f"{precision}: {timed}")
            latency[precision] = _median_latency_ms(run.runner, holdout, runs)
            slower = [b for b in LATENCY_BATCHES if latency[precision][f"b{b}"] > latency["fp32"][f"b{b}"]]
            if slower:
                ops = optimized_op_counts(graphs[precision], threads)
                entry["cpu_slower_than_fp32"] = {
                    "batches": slower,
                    "why": explain_cpu_slowdown(precisions.get(precision, precision), ops, quantized_ops),
                }
        result["graphs"][precision] = entry
    if measure_latency:
        result["ort_cpu_latency_ms"] = latency
        result["threads"] = threads
    return result


def evaluation_steps(graphs: int, measure_latency: bool) -> int:
    """How many times :func:`evaluate_graphs` calls its ``step``: the reference, then each graph, each with
    its latency when measured."""
    return (1 + graphs) * (2 if measure_latency else 1)


def judge_graphs(graphs: dict[str, Any], untrained: bool) -> dict[str, Any]:
    """Each graph's agreement with FP32 against parity's thresholds for its precision, so that calibrate's
    figures end in the same pass/fail parity would give rather than in numbers left for the user to judge."""
    precisions = {}
    for precision, entry in graphs.items():
        limits = thresholds_for(precision, untrained=untrained)
        failures = judge(entry["vs_fp32"], limits)
        precisions[precision] = {
            "status": "failed" if failures else "passed",
            "thresholds": limits.to_dict(),
            "failures": [f.to_dict() for f in failures],
        }
    return {
        "passed": all(p["status"] == "passed" for p in precisions.values()),
        "reference": "the FP32 ONNX graph on the held-out images",
        "precisions": precisions,
        "note": VERDICT_NOTE,
    }
