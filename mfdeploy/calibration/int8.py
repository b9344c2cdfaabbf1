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
- biases (TensorRT adds float biases after the INT8 kernel) and the final logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from mfdeploy.calibration.ranges import TensorRange
from mfdeploy.graph_utils import constant_names, consumers, producers, toposort

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
FLOAT_PRODUCERS = ("LayerNormalization", "Softmax")
SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass
class QuantizationPlan:
    nodes: list[str]  # node names to quantize
    activations: list[str]  # activation tensors that get a Q/DQ pair
    excluded: dict[str, str] = field(default_factory=dict)  # node name -> why it stays float


def traces_to(name: str, producers: dict[str, onnx.NodeProto], op_types: Iterable[str]) -> str | None:
    """The op type in ``op_types`` that produces ``name`` through shape-only ops, if any."""
    seen = 0
    while name in producers and seen < 32:
        node = producers[name]
        if node.op_type in op_types:
            return node.op_type
        if node.op_type not in SHAPE_OPS:
            return None
        name, seen = node.input[0], seen + 1
    return None


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
        activation = node.input[0]
        source = traces_to(activation, producer_of, FLOAT_PRODUCERS)
        if source is not None:
            plan.excluded[node.name] = f"input comes from {source}, whose output stays float"
            continue
        plan.nodes.append(node.name)
        plan.activations.append(activation)
    plan.activations = list(dict.fromkeys(plan.activations))
    return plan


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


def check_tensorrt_qdq(model: onnx.ModelProto) -> list[str]:
    """TensorRT's explicit-quantization rules, checked on a Q/DQ graph; returns the violations.

    Every zero point is 0 (symmetric); weights are per-channel; every Q feeds DQs and every activation
    DQ is fed by a Q (pairs); every quantized op's weight comes through a DQ; no Q takes a
    LayerNormalization or Softmax output (through shape-only ops); the graph outputs are float.
    """
    graph = model.graph
    producer_of, users_of = producers(graph), consumers(graph)
    initializers = {init.name: init for init in graph.initializer}
    problems: list[str] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in initializers:
            problems.append(f"{node.name}: no constant zero point")
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        if zero_point.dtype != np.int8 or np.any(zero_point != 0):
            problems.append(f"{node.name}: zero point must be int8 0, got {zero_point.dtype} {zero_point.ravel()[:3]}")
        if node.op_type == "QuantizeLinear":
            users = users_of.get(node.output[0], [])
            if not users or any(user.op_type != "DequantizeLinear" for user in users):
                problems.append(f"{node.name}: a QuantizeLinear must feed only DequantizeLinear nodes")
            source = traces_to(node.input[0], producer_of, FLOAT_PRODUCERS)
            if source is not None:
                problems.append(f"{node.name}: quantizes a {source} output, which must stay float")
        else:
            data = node.input[0]
            if data in initializers:
                scale = numpy_helper.to_array(initializers[node.input[1]])
                weight = initializers[data]
                if scale.size == 1 and len(weight.dims) > 1:
                    problems.append(f"{node.name}: weight {data} is quantized per tensor, not per channel")
            elif data not in producer_of or producer_of[data].op_type != "QuantizeLinear":
                problems.append(f"{node.name}: activation DequantizeLinear without a QuantizeLinear before it")
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1:
            weight = node.input[1]
            quantized_input = node.input[0] in producer_of and producer_of[node.input[0]].op_type == "DequantizeLinear"
            if quantized_input and not (weight in producer_of and producer_of[weight].op_type == "DequantizeLinear"):
                problems.append(f"{node.name}: quantized activation but float weight")
    for output in graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"graph output {output.name} is not float32")
    return problems
