"""The precision census of a graph: which compute nodes run in INT8, FP16 and FP32, their share of the
multiply-adds, and why each FP32 node is FP32.

A strongly typed TensorRT network runs every layer in the type the ONNX graph gives it, so the census
read off the graph is what the engine will run: a Conv/MatMul/Gemm whose activation and weight both
come from DequantizeLinear is INT8; any other compute node runs in the type of its output. Q/DQ, Cast,
Constant and shape-only nodes are not compute. Multiply-adds are those of the Conv, MatMul and Gemm
nodes at batch 1 (the elementwise ops, norms and softmaxes are a rounding error of the total).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from mfdeploy.calibration.fp16 import Fp32Island, group_islands
from mfdeploy.graph.tensorrt_lint import QUANTIZED_OPS
from mfdeploy.graph.topology import SHAPE_OPS, producers

PRECISIONS = ("int8", "fp16", "fp32")
NOT_COMPUTE = (
    *SHAPE_OPS,
    "QuantizeLinear",
    "DequantizeLinear",
    "Cast",
    "Constant",
    "Shape",
    "Gather",
    "Concat",
    "Slice",
    "Split",
    "Expand",
    "Tile",
)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.DOUBLE: "fp32"}


def _at_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every symbolic input dimension set to 1 and shapes inferred throughout."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    del copy.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(copy, data_prop=True)


def _types_and_shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    types, shapes = {}, {}
    graph = model.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = value.type.tensor_type
        types[value.name] = tensor.elem_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in tensor.shape.dim)
    for init in graph.initializer:
        types[init.name], shapes[init.name] = init.data_type, tuple(init.dims)
    return types, shapes


def _madds(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-adds of a Conv/MatMul/Gemm from its output and input shapes (0 for anything else or when a
    shape is unknown)."""
    out = shapes.get(node.output[0])
    if out is None or node.op_type not in QUANTIZED_OPS:
        return 0
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        return int(np.prod(out)) * int(np.prod(weight[1:])) if weight else 0
    first = shapes.get(node.input[0])
    if not first:
        return 0
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        inner = first[0] if trans_a else first[-1]
    else:
        inner = first[-1]
    return int(np.prod(out)) * int(inner)


def precision_census(model: onnx.ModelProto, islands: list[Fp32Island], other_fp32: str) -> dict[str, Any]:
    """Count the compute nodes of ``model`` by precision, with their share of the multiply-adds.

    ``islands`` say why a node was kept FP32; an FP32 node that is not one gets ``other_fp32`` as its
    reason (the FP32 base; on an FP16 base, a node the converter left in FP32, which should not happen).
    """
    why = {island.node: island for island in islands}
    inferred = _at_batch_one(model)
    types, shapes = _types_and_shapes(inferred)
    producer_of = producers(inferred.graph)
    nodes = {p: 0 for p in PRECISIONS}
    madds = {p: 0 for p in PRECISIONS}
    fp32: list[Fp32Island] = []  # the FP32 compute nodes, each with why it is FP32

    def dequantized(name: str) -> bool:
        node = producer_of.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    for node in inferred.graph.node:
        if node.op_type in NOT_COMPUTE:
            continue
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1 and all(dequantized(n) for n in node.input[:2]):
            precision = "int8"
        else:
            precision = _FLOAT_TYPES.get(types.get(node.output[0], 0))
            if precision is None:
                continue  # integer or boolean arithmetic: not a float compute node
        nodes[precision] += 1
        madds[precision] += _madds(node, shapes)
        if precision == "fp32":
            fp32.append(why.get(node.name) or Fp32Island(node.name, node.op_type, other_fp32, other_fp32))
    total = sum(madds.values())
    return {
        "compute_nodes": sum(nodes.values()),
        "nodes": nodes,
        "madds": madds,
        "madds_share": {p: (madds[p] / total if total else 0.0) for p in PRECISIONS},
        "fp32_nodes": [
            {"node": i.node, "op_type": i.op_type, "reason": i.reason, "group": i.group or i.reason} for i in fp32
        ],
        # the FP16 graph's island grouping, counts only (the nodes are listed just above)
        "fp32_reasons": [{"reason": g["reason"], "nodes": g["nodes"]} for g in group_islands(fp32)],
    }
