"""The INT8 graph for TensorRT: explicit QuantizeLinear/DequantizeLinear pairs, written by ONNX Runtime's
QDQ quantizer from our ranges, in the form TensorRT's strongly typed builder expects.

What is quantized: every Conv, and every MatMul/Gemm with a constant weight (the ops TensorRT runs in
INT8), on their activation input and their weight. Activations are symmetric int8 (zero point 0),
weights per output channel. Kept in float, by design:
- inputs that come straight from LayerNormalization or Softmax (through reshapes/transposes only):
  TensorRT moves a Q node back through shape ops and would fuse it into the norm/softmax, making their
  outputs int8;
- activation x activation MatMuls (attention products), whose operands are softmax outputs or the
  feature map itself;
- MatMuls whose constant weight is not a matrix (the official family's per-head [heads, in, out] projections):
  ONNX Runtime's integer MatMul, which judges the INT8 graph here, takes per-channel scales for 2-D only;
- biases (TensorRT adds float biases after the INT8 kernel) and the final logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from mfdeploy.calibration.ranges import TensorRange
from mfdeploy.graph.tensorrt_lint import FLOAT_PRODUCERS, QUANTIZED_OPS
from mfdeploy.graph.topology import constant_names, producers, toposort, traces_to


@dataclass
class QuantizationPlan:
    nodes: list[str]  # node names to quantize
    activations: list[str]  # activation tensors that get a Q/DQ pair
    excluded: dict[str, str] = field(default_factory=dict)  # node name -> why it stays float


def plan_quantization(model: onnx.ModelProto) -> QuantizationPlan:
    """Which nodes get INT8 and which activation tensors need a range."""
    graph = model.graph
    producer_of, constants = producers(graph), constant_names(graph)
    plan = QuantizationPlan([], [])
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        weight_index = 1
        if node.op_type != "Conv" and (len(node.input) < 2 or node.input[weight_index] not in constants):
            plan.excluded[node.name] = "activation x activation product (attention), no constant weight"
            continue
        rank = _constant_rank(graph, node.input[weight_index]) if node.op_type == "MatMul" else 2
        if rank != 2:
            plan.excluded[node.name] = (
                f"its constant weight has rank {rank}: ONNX Runtime's integer MatMul takes per-channel "
                "scales for a 2-D weight only"
            )
            continue
        activation = node.input[0]
        source = traces_to(activation, producer_of, FLOAT_PRODUCERS)
        if source is not None:
            plan.excluded[node.name] = f"input comes from {source}, whose output stays float"
            continue
        plan.nodes.append(node.name)
        plan.activations.append(activation)
    plan.activations = list(dict.fromkeys(plan.activations))
    return plan


def _constant_rank(graph: onnx.GraphProto, name: str) -> int:
    """Rank of a constant (initializer or Constant node output); 2 when it cannot be told."""
    for init in graph.initializer:
        if init.name == name:
            return len(init.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return len(value.dims) if value is not None else 2
    return 2


def quantize(model: onnx.ModelProto, plan: QuantizationPlan, ranges: dict[str, TensorRange]) -> onnx.ModelProto:
    """Insert Q/DQ pairs with ONNX Runtime's QDQ quantizer, using our ranges instead of its calibrators."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {
            name: TensorData(lowest=np.float32(-r.threshold), highest=np.float32(r.threshold))
            for name, r in ranges.items()
        },
    )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer = QDQQuantizer(
        copy,
        True,  # per-channel weights
        False,  # no reduce_range: TensorRT uses the full int8 range
        QuantType.QInt8,
        QuantType.QInt8,
        tensors,
        plan.nodes,
        [],
        list(QUANTIZED_OPS),
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            # Q/DQ on inputs only: outputs stay float until the next quantized op asks for a pair.
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            # Per output channel: the last axis of a MatMul weight ([.., in, out]); Conv/Gemm use their defaults.
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
        },
    )
    quantizer.quantize_model()
    return toposort(quantizer.model.model)
