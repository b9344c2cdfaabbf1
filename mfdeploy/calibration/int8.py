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
- MatMuls whose constant weight is not a matrix (the seed family's grouped [groups, in, out] projections):
  ONNX Runtime's integer MatMul, which judges the INT8 graph here, takes per-channel scales for 2-D only;
- biases (TensorRT adds float biases after the INT8 kernel) and the final logits.

Residual adds follow TensorRT's placement guidance: where an Add sums a quantized Conv's output and another
activation (the skip branch), that other input gets a Q/DQ pair too, so TensorRT can fuse the Add into the
INT8 convolution; the Conv's own output stays unquantized.

The base (`--int8-base`): by default everything outside the Q/DQ pairs runs in FP16, as NVIDIA's own ONNX
quantizer builds it, with the same statistics-driven FP32 islands as the FP16 graph (see fp16.py). With
strong typing TensorRT runs every layer in the type the graph gives it, so on an FP32 base the
LayerNorms, Softmaxes, attention products and elementwise ops would all run in FP32 and the INT8 engine
could be slower than the FP16 one. FP16 Q/DQ scales need opset 19, so the FP16-based graph is converted
to it (ONNX's version converter). A quantized node whose scale falls below FP16's normal range (2^-14)
keeps its Q/DQ pairs and itself in FP32: an FP16 scale that small keeps only a few significant bits.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import numpy as np
import onnx

from mfdeploy.calibration.fp16 import Fp32Island, to_fp16
from mfdeploy.calibration.ranges import TensorRange
from mfdeploy.calibration.stats import FP16_MIN_NORMAL
from mfdeploy.graph.tensorrt_lint import FLOAT_PRODUCERS, QUANTIZED_OPS
from mfdeploy.graph.topology import constant_names, consumers, producers, toposort, traces_to
from mfdeploy.swapping import swapped

FP16_BASE_OPSET = 19  # the first opset whose QuantizeLinear/DequantizeLinear take FP16 scales
SMALL_SCALE = "an INT8 scale below FP16's normal range (2^-14)"


@dataclass
class QuantizationPlan:
    nodes: list[str]  # node names to quantize
    activations: list[str]  # activation tensors that get a Q/DQ pair
    excluded: dict[str, str] = field(default_factory=dict)  # node name -> why it stays float
    # residual Add node name -> its skip-branch input, quantized so TensorRT fuses the Add into the Conv
    residuals: dict[str, str] = field(default_factory=dict)


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
    plan.residuals = _residual_inputs(graph, set(plan.nodes), producer_of, constants)
    plan.activations = list(dict.fromkeys([*plan.activations, *plan.residuals.values()]))
    return plan


def _residual_inputs(
    graph: onnx.GraphProto, quantized: set[str], producer_of: dict[str, onnx.NodeProto], constants: set[str]
) -> dict[str, str]:
    """Add node -> the input to quantize, for every Add of a quantized Conv's output and another activation
    (TensorRT fuses such an Add into the Conv when the other input is quantized). The Conv's output must
    feed the Add alone, and the other input must not be a LayerNormalization/Softmax output."""
    users_of = consumers(graph)
    residuals = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(name in constants for name in node.input):
            continue
        for fused, other in (node.input, reversed(node.input)):
            conv = producer_of.get(fused)
            if conv is None or conv.op_type != "Conv" or conv.name not in quantized:
                continue
            if len(users_of.get(fused, [])) != 1 or traces_to(other, producer_of, FLOAT_PRODUCERS) is not None:
                continue
            residuals[node.name] = other
            break
    return residuals


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
    quantizer = _quantizer_class(QDQQuantizer)(
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
            # one Q/DQ pair per consumer: an FP32 island keeps its own pairs FP32 without touching its neighbours'
            "DedicatedQDQPair": True,
            # Q/DQ on inputs only: outputs stay float until the next quantized op asks for a pair.
            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            # Per output channel: the last axis of a MatMul weight ([.., in, out]); Conv/Gemm use their defaults.
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
        },
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    _quantize_residuals(quantized, plan, ranges)
    return toposort(quantized)


def per_channel_weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 scales of ``weight``, one per slice along ``axis``: ONNX Runtime's arithmetic
    (``compute_scale_zp``: the range widened to include 0, max |w| over 127, in float64, stored as
    float32; 1.0 where that is below float32's smallest normal), for all channels at once."""
    channels = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    absmax = np.maximum(np.abs(np.minimum(channels.min(axis=1), 0)), np.abs(np.maximum(channels.max(axis=1), 0)))
    scale = (absmax.astype(np.float64) - (-absmax).astype(np.float64)) / (127.0 - -127.0)
    return np.where(scale < np.finfo(np.float32).tiny, np.float32(1.0), scale.astype(np.float32))


def quantized_per_channel(weight: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """``weight`` as symmetric int8 with one scale per slice along ``axis``: ONNX Runtime's arithmetic
    (``quantize_nparray``: float32 division, round half to even, clip to [-128, 127]) for all channels at
    once."""
    shape = [1] * weight.ndim
    shape[axis] = -1
    scaled = np.round(weight.astype(np.float32) / scale.astype(np.float32).reshape(shape))
    return np.clip(scaled, -128, 127).astype(np.int8)


# the quantizer swaps a function of ONNX Runtime's module; re-entrant, so a nested quantization cannot deadlock
_ONE_QUANTIZATION_AT_A_TIME = threading.RLock()


def _quantize_initializer(
    ort_function, weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None, block_size=0
):
    """ONNX Runtime's ``quantize_onnx_initializer`` (``ort_function``), whose per-channel branch loops over
    the channels in Python too: for symmetric int8 per-channel weights, the same tensor computed at once."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX, tensor_proto_to_array

    if quant_type != TensorProto.INT8 or axis is None or block_size or np.any(zero_point):
        return ort_function(weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
    quantized = quantized_per_channel(tensor_proto_to_array(weight), np.asarray(scale), axis)
    return onnx.numpy_helper.from_array(quantized, quant_weight_name or f"{weight.name}{TENSOR_NAME_QUANT_SUFFIX}")


def _quantizer_class(qdq_quantizer: type) -> type:
    """ONNX Runtime's QDQ quantizer with its per-channel weights handled for all channels at once.

    ONNX Runtime computes the per-channel scales, and quantizes the weights, one channel at a time in
    Python: quantizing an official 508m (~59,000 channels) took 5.6 s, 1.35 s with this; a seed 52m
    1.8 -> 0.5 s. Only symmetric int8 per-channel weights without overrides take the shortcut, with the
    same arithmetic (per_channel_weight_scales, quantized_per_channel); everything else, and the Q/DQ
    nodes themselves, stay ONNX Runtime's, and the graph is byte for byte the one ONNX Runtime writes alone.
    """
    from onnx import TensorProto
    from onnxruntime.quantization import qdq_quantizer as ort_module
    from onnxruntime.quantization.base_quantizer import QuantizationParams
    from onnxruntime.quantization.qdq_quantizer import QDQQuantTensorType
    from onnxruntime.quantization.quant_utils import tensor_proto_to_array

    class Quantizer(qdq_quantizer):
        def quantize_model(self):
            with swapped(
                ort_module,
                "quantize_onnx_initializer",
                lambda ort_function: functools.partial(_quantize_initializer, ort_function),
                _ONE_QUANTIZATION_AT_A_TIME,
            ):
                return super().quantize_model()

        def _calc_initializer_quant_params(self):
            plain_int8 = self.weight_qType == TensorProto.INT8 and not self.reduce_range
            if not plain_int8 or self.min_real_range is not None or getattr(self, "block_size", 0):
                return super()._calc_initializer_quant_params()
            everything = self.tensors_to_quantize
            shortcut = {}
            for name, info in everything.items():
                initializer = self.initializers.get(name)
                if (
                    info.tensor_type is QDQQuantTensorType.WEIGHT
                    and info.axis is not None
                    and initializer is not None
                    and initializer.data_type == TensorProto.FLOAT
                    and name not in self.tensor_quant_overrides
                ):
                    weight = tensor_proto_to_array(initializer)
                    if weight.size and -weight.ndim <= info.axis < weight.ndim:
                        axis = info.axis % weight.ndim
                        shortcut[name] = QuantizationParams(
                            zero_point=np.zeros(weight.shape[axis], np.int8),
                            scale=per_channel_weight_scales(weight, axis),
                            quant_type=TensorProto.INT8,
                            axis=axis,
                        )
            self.tensors_to_quantize = {k: v for k, v in everything.items() if k not in shortcut}
            try:
                computed = super()._calc_initializer_quant_params()
            finally:
                self.tensors_to_quantize = everything
            merged = {**computed, **shortcut}
            return {name: merged[name] for name in everything if name in merged}  # ONNX Runtime's order

    return Quantizer


def _quantize_residuals(model: onnx.ModelProto, plan: QuantizationPlan, ranges: dict[str, TensorRange]) -> None:
    """Give each residual Add's skip input a Q/DQ pair of its own (like every other consumer's), with the
    tensor's range."""
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    for add_name, tensor in plan.residuals.items():
        add = nodes.get(add_name)
        if add is None or tensor not in ranges:
            continue
        prefix = f"{add_name}_{tensor}_residual"
        scale, zero, quantized, dequantized = (f"{prefix}_{part}" for part in ("scale", "zero_point", "Q", "DQ"))
        graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(np.array(ranges[tensor].scale, np.float32), scale),
                onnx.numpy_helper.from_array(np.array(0, np.int8), zero),
            ]
        )
        graph.node.extend(
            [
                onnx.helper.make_node("QuantizeLinear", [tensor, scale, zero], [quantized], f"{prefix}_QuantizeLinear"),
                onnx.helper.make_node(
                    "DequantizeLinear", [quantized, scale, zero], [dequantized], f"{prefix}_DequantizeLinear"
                ),
            ]
        )
        add.input[:] = [dequantized if name == tensor else name for name in add.input]


def _feeding_pairs(node: onnx.NodeProto, producer_of: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The DequantizeLinear nodes that feed ``node`` and the QuantizeLinear before each."""
    feeding = []
    for name in node.input:
        dq = producer_of.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        feeding.append(dq)
        q = producer_of.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            feeding.append(q)
    return feeding


def small_scale_islands(quantized: onnx.ModelProto) -> list[Fp32Island]:
    """The quantized nodes that must stay FP32 on an FP16 base because a scale of theirs is below FP16's
    normal range."""
    graph = quantized.graph
    producer_of = producers(graph)
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    islands = []
    for node in graph.node:
        feeding = [n for n in _feeding_pairs(node, producer_of) if n.input[1] in scales]
        smallest = min((float(np.min(np.abs(scales[n.input[1]]))) for n in feeding), default=1.0)
        if smallest < FP16_MIN_NORMAL:
            islands.append(Fp32Island(node.name, node.op_type, f"{SMALL_SCALE}: {smallest:.3g}", SMALL_SCALE))
    return islands


def on_fp16_base(quantized: onnx.ModelProto, islands: list[Fp32Island]) -> tuple[onnx.ModelProto, list[Fp32Island]]:
    """The INT8 graph with everything outside Q/DQ and the FP32 islands in FP16 (opset 19, FP16 scales).
    Returns the graph and every FP32 island it keeps: ``islands`` and the small-scale ones.

    The Q/DQ pairs that feed an island stay FP32 with it (each consumer has its own pair), so an INT8
    Conv or MatMul that is an island reads its DequantizeLinear directly and only its output is FP32."""
    from onnx import version_converter

    converted = version_converter.convert_version(quantized, max(FP16_BASE_OPSET, _opset(quantized)))
    known = {island.node for island in islands}
    kept = [*islands, *(island for island in small_scale_islands(converted) if island.node not in known)]
    producer_of = producers(converted.graph)
    names = {island.node for island in kept}
    pairs = [q.name for node in converted.graph.node if node.name in names for q in _feeding_pairs(node, producer_of)]
    return to_fp16(converted, kept, also_blocked=list(dict.fromkeys(pairs))), kept


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
