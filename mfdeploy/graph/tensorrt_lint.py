"""TensorRT readiness lint, run on the CPU: will TensorRT's ONNX parser and strongly typed builder
accept this graph as it is?

Checks every node against the operators (and per-operator element types) TensorRT's parser supports,
kept as data in ``data/tensorrt_onnx_operators.json`` with the TensorRT version it describes and its
source; the machine-checkable restrictions on attributes and inputs; no tensor of rank 5 or more;
Q/DQ placement TensorRT accepts (symmetric, zero point 0, per-channel weights, pairs, no int8 norm
outputs); and LayerNormalization/Softmax not computed in FP16 unless the user allowed it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from mfdeploy.artifacts import ENGINE_PRECISIONS, precision_graph
from mfdeploy.graph.checks import MAX_RANK
from mfdeploy.graph.topology import constant_names, consumers, producers, traces_to

DATA_FILE = Path(__file__).with_name("data") / "tensorrt_onnx_operators.json"
NORM_OPS = ("LayerNormalization", "Softmax")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the ops TensorRT fuses a Q/DQ pair on both inputs into
FLOAT_PRODUCERS = NORM_OPS  # their outputs must stay float: no Q right after them

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.DOUBLE: "DOUBLE",
}


@lru_cache(maxsize=1)
def operator_table() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text())


@dataclass
class LintReport:
    graph: str
    tensorrt_version: str
    nodes: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)


def _attribute(node: onnx.NodeProto, name: str) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return None


def _restriction_problems(node: onnx.NodeProto, constants: set[str], users: dict[str, list]) -> list[str]:
    op = node.op_type
    where = f"{op} {node.name}"
    problems = []
    if op.startswith("Reduce") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        problems.append(f"{where}: axes must be an initializer")
    if op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] not in constants:
        problems.append(f"{where}: axes must be a constant")
    if op == "LayerNormalization" and any(out and users.get(out) for out in node.output[1:]):
        problems.append(f"{where}: only the first output (Y) is supported")
    if op in ("AveragePool", "MaxPool"):
        kernel = _attribute(node, "kernel_shape") or []
        dilations = _attribute(node, "dilations") or []
        if len(kernel) not in (2, 3):
            problems.append(f"{where}: only 2D or 3D pooling is supported")
        if any(d != 1 for d in dilations):
            problems.append(f"{where}: dilations must be all ones")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1] and users.get(node.output[1]):
            problems.append(f"{where}: the Indices output is not supported")
    if op == "TopK" and _attribute(node, "sorted") == 0:
        problems.append(f"{where}: sorted must be 1")
    if op == "Dropout" and len(node.input) > 2 and node.input[2] and node.input[2] not in constants:
        problems.append(f"{where}: is_training must be an initializer set to False")
    return problems


def lint_graph(model: onnx.ModelProto, name: str = "graph", allow_fp16_norms: bool = False) -> LintReport:
    """Every TensorRT readiness problem of ``model`` (an empty list means it should parse and build)."""
    table = operator_table()
    supported, unsupported = table["supported"], set(table["unsupported"])
    graph = model.graph
    report = LintReport(name, table["tensorrt_version"], len(graph.node))
    problems = report.problems

    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not table["opset_min"] <= opset.version <= table["opset_max"]:
            problems.append(
                f"opset {opset.version} outside TensorRT {table['tensorrt_version']}'s range "
                f"{table['opset_min']}..{table['opset_max']}"
            )
        elif opset.domain not in ("", "ai.onnx"):
            problems.append(f"custom opset domain {opset.domain!r} needs a TensorRT plugin")

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError or RuntimeError by version
        problems.append(f"shape inference failed: {str(exc).splitlines()[0]}")
        inferred = model
    values = {
        v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    types = {name: v.type.tensor_type.elem_type for name, v in values.items()}
    types.update({init.name: init.data_type for init in graph.initializer})
    io_names = {v.name for v in list(graph.input) + list(graph.output)}

    for name, value in values.items():
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and len(shape.dim) > MAX_RANK:
            problems.append(f"tensor {name} has rank {len(shape.dim)} (> {MAX_RANK})")
        if types.get(name) == onnx.TensorProto.UINT8 and name not in io_names:
            problems.append(f"tensor {name} is UINT8, which TensorRT allows only as a network input or output")
        if types.get(name) == onnx.TensorProto.DOUBLE:
            problems.append(f"tensor {name} is DOUBLE; TensorRT clamps it to FP32 (export float32)")

    constants = constant_names(graph)
    users = consumers(graph)
    for node in graph.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{op} {node.name}: custom op ({node.domain}) needs a TensorRT plugin")
            continue
        if op in unsupported or op not in supported:
            problems.append(f"{op} {node.name}: not supported by TensorRT {table['tensorrt_version']}'s ONNX parser")
            continue
        allowed = set(supported[op])
        data_inputs = node.input[:1] if op in ("QuantizeLinear", "DequantizeLinear") else node.input
        for tensor in data_inputs:
            if not tensor or tensor not in types:
                continue
            type_name = _TYPE_NAMES.get(types[tensor], str(types[tensor]))
            if type_name not in allowed and not (type_name == "INT64" and tensor in constants):
                problems.append(
                    f"{op} {node.name}: input {tensor} is {type_name}; TensorRT supports {', '.join(sorted(allowed))}"
                )
        problems.extend(_restriction_problems(node, constants, users))
        if op in NORM_OPS and not allow_fp16_norms and types.get(node.input[0]) == onnx.TensorProto.FLOAT16:
            problems.append(f"{op} {node.name} runs in FP16; keep it FP32 (or pass --fp16-norm to allow it)")

    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node):
        problems.extend(check_tensorrt_qdq(model))
    return report


def lint_artifact(artifact, allow_fp16_norms: bool | None = None) -> list[LintReport]:
    """Lint every TensorRT-bound graph an artifact holds (model.onnx, model.fp16.onnx, model.int8.onnx)."""
    if allow_fp16_norms is None:
        allow_fp16_norms = not artifact.manifest.get("calibration", {}).get("norms_kept_fp32", True)
    reports = []
    for name in map(precision_graph, ENGINE_PRECISIONS):
        if artifact.has(name):
            path = artifact.require(name, "re-export the artifact")
            reports.append(lint_graph(onnx.load(str(path)), name, allow_fp16_norms))
    return reports


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
