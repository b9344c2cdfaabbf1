"""How far the INT8 and FP16 graphs are from FP32, and what they cost on ONNX Runtime's CPU provider.

Accuracy is measured on held-out images (never part of the calibration set) as agreement with the FP32
graph. Latency is measured here only to say what a CPU user would see: the graphs are built for
TensorRT, and when a Q/DQ graph is slower on the CPU the report says why, from ONNX Runtime's own
optimized graph (which Q/DQ pairs it fused into integer kernels and which it runs as separate ops).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mfdeploy.metrics import compare_logits

LATENCY_BATCHES = (1, 8)
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat")


def _session(path: Path, threads: int | None, optimized_path: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(session, images: np.ndarray, runs: int, warmup: int) -> float:
    feed = {session.get_inputs()[0].name: images}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _ort_optimized_ops(path: Path, threads: int | None) -> Counter:
    """Op histogram of the graph ONNX Runtime actually runs after its CPU optimizations."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _session(path, threads, optimized)
        model = onnx.load(str(optimized), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def explain_cpu_slowdown(precision: str, ops: Counter, quantized_ops: int) -> str:
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
) -> dict[str, Any]:
    """Agreement with FP32 on ``holdout`` and ORT CPU latency at batch 1 and 8, per precision graph."""
    reference_session = _session(fp32, threads)
    reference = reference_session.run(None, {reference_session.get_inputs()[0].name: holdout})[0]
    result: dict[str, Any] = {"holdout_images": int(len(holdout)), "graphs": {}}
    latency: dict[str, dict[str, float]] = {}
    if measure_latency:
        latency["fp32"] = {
            f"b{b}": round(_median_ms(reference_session, holdout[:b], runs, 5), 3) for b in LATENCY_BATCHES
        }
    for precision, path in graphs.items():
        session = _session(path, threads)
        logits = session.run(None, {session.get_inputs()[0].name: holdout})[0]
        entry: dict[str, Any] = {"vs_fp32": compare_logits(reference, logits)}
        if measure_latency:
            latency[precision] = {f"b{b}": round(_median_ms(session, holdout[:b], runs, 5), 3) for b in LATENCY_BATCHES}
            slower = [b for b in LATENCY_BATCHES if latency[precision][f"b{b}"] > latency["fp32"][f"b{b}"]]
            if slower:
                entry["cpu_slower_than_fp32"] = {
                    "batches": slower,
                    "why": explain_cpu_slowdown(precision, _ort_optimized_ops(path, threads), quantized_ops),
                }
        result["graphs"][precision] = entry
    if measure_latency:
        result["ort_cpu_latency_ms"] = latency
        result["threads"] = threads
    return result
