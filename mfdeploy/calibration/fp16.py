"""The FP16 graph for TensorRT: mixed precision with FP32 islands chosen from the recorded statistics.

A node stays FP32 when (thresholds follow NVIDIA ModelOpt AutoCast's defaults where it has them):
- its output reached |x| > 512 on the calibration data (AutoCast's data_max: large activations feed
  sums that overflow FP16's 65504), or overflowed FP16 outright;
- most of its output values fall below FP16's smallest normal number (2^-14), where FP16 keeps only a
  few significant bits;
- one of its weights exceeds 65504 (AutoCast's init_max) or is mostly below 2^-14;
- it is LayerNormalization or Softmax, or a reduction feeding one (mean/variance and exp-sums lose
  precision or overflow in FP16), unless the user allows normalisation in FP16.
The conversion itself is ONNX Runtime's float16 converter (onnxruntime.transformers.float16), which
keeps the graph inputs and outputs FP32 and puts Cast nodes at every island border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from mfdeploy.calibration.stats import FP16_MAX, FP16_MIN_NORMAL, CalibrationStats
from mfdeploy.graph.topology import SHAPE_OPS, consumers, toposort

DATA_MAX = 512.0
UNDERFLOW_SHARE = 0.5
NORM_OPS = ("LayerNormalization", "Softmax")
REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp")
ELEMENTWISE = SHAPE_OPS + ("Sub", "Add", "Mul", "Div", "Pow", "Sqrt", "Exp", "Cast")


POLICY = "policy; --fp16-norm allows FP16"


@dataclass
class Fp32Island:
    node: str
    op_type: str
    reason: str  # this node's reasons, with the values measured on it
    group: str = ""  # the same reasons without the node's values: the row of calibration.md it is counted in


def _weight_reason(array: np.ndarray, name: str) -> tuple[str, str] | None:
    """(group, reason) when a weight cannot be held in FP16, else None."""
    magnitude = np.abs(array.astype(np.float64))
    if magnitude.size == 0:
        return None
    if magnitude.max() > FP16_MAX:
        return (
            "a weight exceeds 65504 (FP16 overflow)",
            f"weight {name} reaches |w| = {magnitude.max():.3g} > 65504 (FP16 overflow)",
        )
    nonzero = magnitude[magnitude > 0]
    if nonzero.size and np.mean(nonzero < FP16_MIN_NORMAL) > UNDERFLOW_SHARE:
        return (
            "a weight is mostly below FP16's normal range (2^-14)",
            f"weight {name}: {np.mean(nonzero < FP16_MIN_NORMAL):.0%} of values below FP16's normal range",
        )
    return None


def _reductions_feeding_norms(graph: onnx.GraphProto) -> set[str]:
    """Reduce nodes whose output reaches a LayerNormalization/Softmax through elementwise ops."""
    users_of = consumers(graph)
    found = set()
    for node in graph.node:
        if node.op_type not in REDUCE_OPS:
            continue
        frontier, steps = list(node.output), 0
        while frontier and steps < 16:
            users = [u for name in frontier for u in users_of.get(name, [])]
            if any(u.op_type in NORM_OPS for u in users):
                found.add(node.name)
                break
            frontier = [o for u in users if u.op_type in ELEMENTWISE for o in u.output]
            steps += 1
    return found


def choose_fp32_islands(model: onnx.ModelProto, stats: CalibrationStats, keep_norms: bool = True) -> list[Fp32Island]:
    """Every node that must stay FP32, with the reason, decided from the statistics and weights."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    reductions = _reductions_feeding_norms(graph) if keep_norms else set()
    islands = []
    for node in graph.node:
        reasons: list[tuple[str, str]] = []  # (group, reason)
        if keep_norms and node.op_type in NORM_OPS:
            reasons.append(
                (
                    f"{node.op_type} kept FP32 ({POLICY})",
                    f"{node.op_type} kept FP32 by default (statistics lose precision in FP16)",
                )
            )
        if node.name in reductions:
            reasons.append((f"reduction feeding a LayerNormalization/Softmax ({POLICY})",) * 2)
        for out in node.output:
            if out not in stats._index:
                continue
            i = stats.index(out)
            absmax = stats.absmax(out)
            if stats.n_fp16_overflow[i] > 0:
                reasons.append(
                    (
                        "output overflows FP16 (|x| > 65504)",
                        f"output overflows FP16 ({int(stats.n_fp16_overflow[i])} values > 65504)",
                    )
                )
            elif absmax > DATA_MAX:
                reasons.append(
                    (f"output reaches |x| > {DATA_MAX:g}", f"output reaches |x| = {absmax:.4g} > {DATA_MAX:g}")
                )
            nonzero = stats.count[i]
            share = stats.n_fp16_underflow[i] / nonzero if nonzero else 0.0
            if share > UNDERFLOW_SHARE:
                reasons.append(
                    (
                        "most output values below FP16's normal range (2^-14)",
                        f"{share:.0%} of output values below FP16's normal range (2^-14)",
                    )
                )
        for name in node.input:
            if name in initializers:
                reason = _weight_reason(numpy_helper.to_array(initializers[name]), name)
                if reason:
                    reasons.append(reason)
        if reasons:
            islands.append(
                Fp32Island(
                    node.name,
                    node.op_type,
                    "; ".join(dict.fromkeys(r for _, r in reasons)),
                    "; ".join(dict.fromkeys(g for g, _ in reasons)),
                )
            )
    return islands


def group_islands(islands: list[Fp32Island], examples: int = 3) -> list[dict[str, object]]:
    """One entry per group of reasons, largest first (ties in graph order): the reason, how many nodes,
    and the first ``examples`` node names; what calibration.md shows instead of one row per node."""
    groups: dict[str, list[str]] = {}
    for island in islands:
        groups.setdefault(island.group or island.reason, []).append(island.node)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))  # stable: graph order among equal counts
    return [{"reason": reason, "nodes": len(nodes), "examples": nodes[:examples]} for reason, nodes in ordered]


def to_fp16(model: onnx.ModelProto, islands: list[Fp32Island], also_blocked: list[str] = ()) -> onnx.ModelProto:
    """Convert everything outside ``islands`` (and the nodes named in ``also_blocked``) to FP16, keeping
    FP32 graph inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    converted = convert_float_to_float16(
        copy,
        keep_io_types=True,
        node_block_list=[island.node for island in islands] + list(also_blocked),
        op_block_list=[],
    )
    return toposort(drop_cast_round_trips(converted))


def drop_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the FP32 -> FP16 -> FP32 Cast pairs the converter puts between two FP32 nodes (it casts every
    blocked node's output to FP16 and every blocked node's input back): the FP32 consumer reads the FP32
    tensor itself, which is exact, and TensorRT sees a DequantizeLinear feed its INT8 layer directly."""
    graph = model.graph
    producer_of = {out: node for node in graph.node for out in node.output}
    float_types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    to_type = {
        id(n): next((a.i for a in n.attribute if a.name == "to"), None) for n in graph.node if n.op_type == "Cast"
    }
    replaced = {}
    for node in graph.node:
        if node.op_type != "Cast" or to_type[id(node)] != onnx.TensorProto.FLOAT:
            continue
        first = producer_of.get(node.input[0])
        if first is None or first.op_type != "Cast" or to_type[id(first)] != onnx.TensorProto.FLOAT16:
            continue
        if float_types.get(first.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
            replaced[node.output[0]] = first.input[0]
    if not replaced:
        return model
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        node.input[:] = [replaced.get(name, name) for name in node.input]
    kept = [n for n in graph.node if not (n.output and n.output[0] in replaced and n.output[0] not in outputs)]
    used = {name for n in kept for name in n.input} | outputs
    kept = [n for n in kept if n.op_type != "Cast" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    return model
