"""TensorRT readiness lint, run on the CPU: will TensorRT's ONNX parser and strongly typed builder
accept this graph as it is, and does it follow mfdeploy's own deployment policies?

Every finding names its rule, and every rule is one of two kinds (``RULES``):

- a **TensorRT rule** (an error): TensorRT's ONNX parser or its strongly typed builder rejects or
  mis-handles the graph. Each cites where TensorRT says so: onnx-tensorrt's ``docs/operators.md``
  (operators, element types, restrictions, opset range, UINT8), TensorRT's API (at most 8 dimensions),
  the developer guide's "Working with Quantized Types" / "Explicit Quantization" (symmetric Q/DQ,
  activations per tensor, weights per channel only along the output-channel axis).
- an **mfdeploy policy** (a warning; ``strict=True`` / ``--strict`` makes it an error): a choice of
  ours that TensorRT would accept, e.g. rank <= 4, per-channel weights, LayerNorm/Softmax kept FP32.

The operator table is data, ``data/tensorrt_onnx_operators.json``; tests compare it with a vendored
copy of onnx-tensorrt's ``docs/operators.md`` (``data/onnx_tensorrt_operators.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


TENSORRT = "tensorrt"  # TensorRT rejects or mis-handles it: always an error
POLICY = "policy"  # mfdeploy's choice: a warning unless strict
KIND_LABELS = {TENSORRT: "TensorRT rule", POLICY: "mfdeploy policy"}
TENSORRT_MAX_RANK = 8  # nvinfer1::Dims64::MAX_DIMS
_OPERATORS_MD = "onnx-tensorrt docs/operators.md"
_QUANTIZED_TYPES = (
    "TensorRT developer guide, Working with Quantized Types / Explicit Quantization "
    "(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html)"
)

# rule -> (kind, where it comes from); every finding names one of these.
RULES: dict[str, tuple[str, str]] = {
    "opset-range": (TENSORRT, f"{_OPERATORS_MD}: the opset range the parser imports"),
    "custom-domain": (TENSORRT, f"{_OPERATORS_MD}: only default-domain ONNX ops; others need a plugin"),
    "operator": (TENSORRT, f"{_OPERATORS_MD}: Operator Support Matrix (Supported column)"),
    "element-type": (TENSORRT, f"{_OPERATORS_MD}: Supported Types column"),
    "restriction": (TENSORRT, f"{_OPERATORS_MD}: Restrictions column"),
    "uint8-tensor": (TENSORRT, f"{_OPERATORS_MD}: UINT8 only as a network input or output"),
    "max-rank": (TENSORRT, "TensorRT API: nvinfer1::Dims64::MAX_DIMS = 8"),
    "qdq-zero-point": (
        TENSORRT,
        f"{_OPERATORS_MD}: Q/DQ zero point must be 0; {_QUANTIZED_TYPES}: symmetric quantization, "
        "INT8/INT4/FP8/FP4 only",
    ),
    "qdq-activation-per-tensor": (TENSORRT, f"{_QUANTIZED_TYPES}: activations are quantized per tensor"),
    "qdq-weight-axis": (
        TENSORRT,
        f"{_QUANTIZED_TYPES}: per-channel quantization only for weights, along the output-channel axis",
    ),
    "rank": (POLICY, f"mfdeploy keeps every tensor at rank <= {MAX_RANK} (TensorRT allows {TENSORRT_MAX_RANK})"),
    "double": (POLICY, f"mfdeploy exports float32; TensorRT casts DOUBLE to FLOAT ({_OPERATORS_MD} note)"),
    "shape-inference": (POLICY, "mfdeploy: every graph passes ONNX's strict shape inference"),
    "fp16-norm": (POLICY, "mfdeploy keeps LayerNormalization/Softmax in FP32 for accuracy (--fp16-norm allows it)"),
    "qdq-constant-params": (POLICY, "mfdeploy writes Q/DQ scales and zero points as constants (checkable here)"),
    "qdq-zero-point-explicit": (POLICY, "mfdeploy writes every Q/DQ zero point as an int8 initializer"),
    "qdq-weight-per-channel": (POLICY, "mfdeploy quantizes weights per channel (TensorRT accepts per tensor)"),
    "qdq-pairs": (POLICY, "mfdeploy writes Q/DQ as pairs: every Q feeds DQs, every activation DQ has a Q"),
    "qdq-float-norm-output": (POLICY, "mfdeploy keeps LayerNormalization/Softmax outputs float (no Q after them)"),
    "qdq-float-weight": (POLICY, "mfdeploy quantizes the weight of every quantized Conv/MatMul/Gemm"),
    "float-output": (POLICY, "mfdeploy's INT8 graphs return float32 logits"),
}


@dataclass
class Finding:
    rule: str
    message: str

    @property
    def kind(self) -> str:
        return RULES[self.rule][0]

    def label(self, strict: bool = False) -> str:
        """``error (TensorRT rule)``, ``warning (mfdeploy policy)`` or ``error (mfdeploy policy, --strict)``."""
        if self.kind == TENSORRT:
            return f"error ({KIND_LABELS[TENSORRT]})"
        return f"error ({KIND_LABELS[POLICY]}, --strict)" if strict else f"warning ({KIND_LABELS[POLICY]})"

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        severity = "error" if self.kind == TENSORRT or strict else "warning"
        return {
            "rule": self.rule,
            "kind": self.kind,
            "severity": severity,
            "message": self.message,
            "source": RULES[self.rule][1],
        }


@dataclass
class LintReport:
    """``problems``: the errors (TensorRT rules, and mfdeploy policies when strict); ``warnings``: the
    policies a non-strict lint only reports. ``ok`` means no errors."""

    graph: str
    tensorrt_version: str
    nodes: int
    strict: bool = False
    findings: list[Finding] = field(default_factory=list)

    def add(self, rule: str, message: str) -> None:
        self.findings.append(Finding(rule, message))

    def is_error(self, finding: Finding) -> bool:
        return finding.kind == TENSORRT or self.strict

    @property
    def problems(self) -> list[str]:
        return [f.message for f in self.findings if self.is_error(f)]

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if not self.is_error(f)]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "tensorrt_version": self.tensorrt_version,
            "nodes": self.nodes,
            "strict": self.strict,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "findings": [f.to_dict(self.strict) for f in self.findings],
        }


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


def lint_graph(
    model: onnx.ModelProto, name: str = "graph", allow_fp16_norms: bool = False, strict: bool = False
) -> LintReport:
    """Every TensorRT-rule violation and mfdeploy-policy departure of ``model``; ``report.ok`` means no
    errors (no TensorRT rule broken, and with ``strict`` no policy either)."""
    table = operator_table()
    supported, unsupported = table["supported"], set(table["unsupported"])
    graph = model.graph
    report = LintReport(name, table["tensorrt_version"], len(graph.node), strict)
    add = report.add

    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not table["opset_min"] <= opset.version <= table["opset_max"]:
            add(
                "opset-range",
                f"opset {opset.version} outside TensorRT {table['tensorrt_version']}'s range "
                f"{table['opset_min']}..{table['opset_max']}",
            )
        elif opset.domain not in ("", "ai.onnx"):
            add("custom-domain", f"custom opset domain {opset.domain!r} needs a TensorRT plugin")

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError or RuntimeError by version
        add("shape-inference", f"shape inference failed: {str(exc).splitlines()[0]}")
        inferred = model
    values = {
        v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    types = {name: v.type.tensor_type.elem_type for name, v in values.items()}
    types.update({init.name: init.data_type for init in graph.initializer})
    io_names = {v.name for v in list(graph.input) + list(graph.output)}

    for name, value in values.items():
        shape = value.type.tensor_type.shape
        rank = len(shape.dim) if value.type.tensor_type.HasField("shape") else 0
        if rank > TENSORRT_MAX_RANK:
            add("max-rank", f"tensor {name} has rank {rank}; TensorRT allows at most {TENSORRT_MAX_RANK}")
        elif rank > MAX_RANK:
            add("rank", f"tensor {name} has rank {rank} (> {MAX_RANK}, mfdeploy's limit)")
        if types.get(name) == onnx.TensorProto.UINT8 and name not in io_names:
            add("uint8-tensor", f"tensor {name} is UINT8, which TensorRT allows only as a network input or output")
        if types.get(name) == onnx.TensorProto.DOUBLE:
            add("double", f"tensor {name} is DOUBLE; TensorRT clamps it to FP32 (export float32)")

    constants = constant_names(graph)
    users = consumers(graph)
    for node in graph.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            add("custom-domain", f"{op} {node.name}: custom op ({node.domain}) needs a TensorRT plugin")
            continue
        if op in unsupported or op not in supported:
            add("operator", f"{op} {node.name}: not supported by TensorRT {table['tensorrt_version']}'s ONNX parser")
            continue
        allowed = set(supported[op])
        data_inputs = node.input[:1] if op in ("QuantizeLinear", "DequantizeLinear") else node.input
        for tensor in data_inputs:
            if not tensor or tensor not in types:
                continue
            type_name = _TYPE_NAMES.get(types[tensor], str(types[tensor]))
            if type_name not in allowed and not (type_name == "INT64" and tensor in constants):
                add(
                    "element-type",
                    f"{op} {node.name}: input {tensor} is {type_name}; TensorRT supports {', '.join(sorted(allowed))}",
                )
        for problem in _restriction_problems(node, constants, users):
            add("restriction", problem)
        if op in NORM_OPS and not allow_fp16_norms and types.get(node.input[0]) == onnx.TensorProto.FLOAT16:
            add("fp16-norm", f"{op} {node.name} runs in FP16; keep it FP32 (or pass --fp16-norm to allow it)")

    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node):
        report.findings.extend(qdq_findings(model))
    return report


def lint_artifact(artifact, allow_fp16_norms: bool | None = None, strict: bool = False) -> list[LintReport]:
    """Lint every TensorRT-bound graph an artifact holds (model.onnx, model.fp16.onnx, model.int8.onnx)."""
    if allow_fp16_norms is None:
        allow_fp16_norms = not artifact.manifest.get("calibration", {}).get("norms_kept_fp32", True)
    reports = []
    for name in map(precision_graph, ENGINE_PRECISIONS):
        if artifact.has(name):
            path = artifact.require(name, "re-export the artifact")
            reports.append(lint_graph(onnx.load(str(path)), name, allow_fp16_norms, strict))
    return reports


def check_tensorrt_qdq(model: onnx.ModelProto) -> list[str]:
    """Every Q/DQ finding of ``model``, TensorRT rules and mfdeploy policies alike, each message ending
    with its kind. Calibration uses it to check its own graph, which must meet both."""
    return [f"{f.message} [{KIND_LABELS[f.kind]}]" for f in qdq_findings(model)]


def _constant_array(name: str, initializers: dict, constant_nodes: dict) -> np.ndarray | None:
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    if name in constant_nodes:
        value = _attribute(constant_nodes[name], "value")
        return numpy_helper.to_array(value) if value is not None else None
    return None


def _output_channel_axis(weight_rank: int, users: list[onnx.NodeProto], tensor: str) -> int | None:
    """The output-channel axis of a weight as its consumer reads it (None: no consumer says)."""
    axes = set()
    for user in users:
        if len(user.input) < 2 or user.input[1] != tensor:
            continue
        if user.op_type == "Conv":
            axes.add(0)  # (M, C/group, kH, kW)
        elif user.op_type == "ConvTranspose":
            axes.add(1)  # (C, M/group, kH, kW)
        elif user.op_type == "Gemm":
            axes.add(0 if _attribute(user, "transB") else 1)  # B is (K, N), or (N, K) with transB
        elif user.op_type == "MatMul":
            axes.add(weight_rank - 1)  # (..., K, N)
    return axes.pop() if len(axes) == 1 else None


def qdq_findings(model: onnx.ModelProto) -> list[Finding]:
    """TensorRT's explicit-quantization rules and mfdeploy's Q/DQ policies, checked on a Q/DQ graph.

    TensorRT rules: zero points are constant int8 0 (symmetric); activations (non-constant inputs) are
    quantized per tensor, with a scalar scale and zero point; only weights (constant inputs, or a Q of
    one) may be per channel, and then along the consumer's output-channel axis.
    mfdeploy policies: zero points written out; weights per channel; Q/DQ in pairs; every quantized op's
    weight comes through a DQ; no Q takes a LayerNormalization or Softmax output (through shape-only
    ops); the graph outputs are float32.
    """
    graph = model.graph
    producer_of, users_of = producers(graph), consumers(graph)
    initializers = {init.name: init for init in graph.initializer}
    constant_nodes = {out: node for node in graph.node if node.op_type == "Constant" for out in node.output}
    constants = constant_names(graph)
    findings: list[Finding] = []

    def add(rule: str, message: str) -> None:
        findings.append(Finding(rule, message))

    def is_weight(tensor: str) -> bool:
        """A constant, or a QuantizeLinear of one (weights written as float -> Q -> DQ)."""
        if tensor in constants:
            return True
        node = producer_of.get(tensor)
        return node is not None and node.op_type == "QuantizeLinear" and node.input[0] in constants

    def weight_shape(tensor: str) -> tuple[int, ...] | None:
        node = producer_of.get(tensor)
        if tensor not in constants and node is not None:
            tensor = node.input[0]
        array = _constant_array(tensor, initializers, constant_nodes)
        return None if array is None else array.shape

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        data = node.input[0]
        scale = _constant_array(node.input[1], initializers, constant_nodes) if len(node.input) > 1 else None
        zero_point = None
        if len(node.input) < 3 or not node.input[2]:
            add("qdq-zero-point-explicit", f"{node.name}: no zero point (ONNX then means uint8)")
        else:
            zero_point = _constant_array(node.input[2], initializers, constant_nodes)
            if zero_point is None:
                add("qdq-constant-params", f"{node.name}: zero point {node.input[2]} is not a constant")
            elif zero_point.dtype != np.int8 or np.any(zero_point != 0):
                add(
                    "qdq-zero-point",
                    f"{node.name}: zero point must be int8 0, got {zero_point.dtype} {zero_point.ravel()[:3]}",
                )
        if scale is None:
            add("qdq-constant-params", f"{node.name}: scale {node.input[1]} is not a constant")
        if is_weight(data):
            shape = weight_shape(data)
            if scale is not None and scale.size > 1 and shape is not None:
                axis = _attribute(node, "axis")
                axis = 1 if axis is None else axis
                axis = axis + len(shape) if axis < 0 else axis
                dq_out = node.output[0]
                if node.op_type == "QuantizeLinear":  # the DQ after it is what the consumer reads
                    dq_users = [u for u in users_of.get(dq_out, []) if u.op_type == "DequantizeLinear"]
                    dq_out = dq_users[0].output[0] if dq_users else dq_out
                wanted = _output_channel_axis(len(shape), users_of.get(dq_out, []), dq_out)
                if wanted is not None and axis != wanted:
                    add(
                        "qdq-weight-axis",
                        f"{node.name}: weight {data} is quantized per channel along axis {axis}, not its "
                        f"output-channel axis {wanted}",
                    )
            if node.op_type == "DequantizeLinear" and scale is not None and scale.size == 1:
                if shape is not None and len(shape) > 1:
                    add(
                        "qdq-weight-per-channel", f"{node.name}: weight {data} is quantized per tensor, not per channel"
                    )
        else:
            if (scale is not None and scale.size != 1) or (zero_point is not None and zero_point.size != 1):
                size = scale.size if scale is not None and scale.size != 1 else zero_point.size
                add(
                    "qdq-activation-per-tensor",
                    f"{node.name}: activation {data} has {size} scales/zero points; TensorRT quantizes "
                    "activations per tensor (one scalar scale and zero point)",
                )
            if node.op_type == "QuantizeLinear":
                source = traces_to(data, producer_of, FLOAT_PRODUCERS)
                if source is not None:
                    add("qdq-float-norm-output", f"{node.name}: quantizes a {source} output, which must stay float")
            elif data not in producer_of or producer_of[data].op_type != "QuantizeLinear":
                add("qdq-pairs", f"{node.name}: activation DequantizeLinear without a QuantizeLinear before it")
        if node.op_type == "QuantizeLinear":
            users = users_of.get(node.output[0], [])
            if not users or any(user.op_type != "DequantizeLinear" for user in users):
                add("qdq-pairs", f"{node.name}: a QuantizeLinear must feed only DequantizeLinear nodes")
    for node in graph.node:
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1:
            weight = node.input[1]
            quantized_input = node.input[0] in producer_of and producer_of[node.input[0]].op_type == "DequantizeLinear"
            if quantized_input and not (weight in producer_of and producer_of[weight].op_type == "DequantizeLinear"):
                add("qdq-float-weight", f"{node.name}: quantized activation but float weight")
    for output in graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            add("float-output", f"graph output {output.name} is not float32")
    return findings
