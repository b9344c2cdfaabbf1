"""Checks every exported graph must pass: valid ONNX, and portable to TensorRT and other runtimes.

Portable here means custom-op-free: only the default ONNX domain, no control flow (Loop, If, Scan),
and no tensor of rank 5 or more anywhere, checked on the value_info that shape inference produces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
CONTROL_FLOW_OPS = ("Loop", "If", "Scan")
MAX_RANK = 4


@dataclass
class GraphReport:
    node_count: int
    op_histogram: dict[str, int]
    opset: int
    max_rank: int
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rank_of(value: onnx.ValueInfoProto) -> int | None:
    tensor_type = value.type.tensor_type
    return len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def check_graph(model: onnx.ModelProto, full_check: bool = True) -> GraphReport:
    """Run onnx.checker (full check) and shape inference, then the portability rules."""
    violations: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as exc:
        violations.append(f"onnx.checker: {str(exc).strip().splitlines()[0]}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError or RuntimeError by version
        violations.append(f"shape inference: {str(exc).strip().splitlines()[0]}")
        inferred = model

    graph = inferred.graph
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    foreign = sorted({o.domain for o in model.opset_import if o.domain not in DEFAULT_DOMAINS})
    if foreign:
        violations.append(f"non-default opset domains imported: {', '.join(foreign)}")
    if model.functions:
        violations.append(f"model-local functions present: {', '.join(f.name for f in model.functions)}")
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            violations.append(f"custom op {node.domain}::{node.op_type} at {node.name}")
        if node.op_type in CONTROL_FLOW_OPS:
            violations.append(f"control flow {node.op_type} at {node.name}")
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            violations.append(f"subgraph attribute on {node.op_type} at {node.name}")

    ranks: dict[str, int] = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        rank = _rank_of(value)
        if rank is not None:
            ranks[value.name] = rank
    for init in graph.initializer:
        ranks[init.name] = len(init.dims)
    produced = {out for node in graph.node for out in node.output}
    missing = sorted(name for name in produced if name and name not in ranks)
    if missing:
        violations.append(f"shape inference left {len(missing)} tensors without a shape (e.g. {missing[0]})")
    high = sorted((rank, name) for name, rank in ranks.items() if rank > MAX_RANK)
    for rank, name in high[:5]:
        violations.append(f"rank-{rank} tensor {name}")
    if len(high) > 5:
        violations.append(f"... and {len(high) - 5} more tensors of rank > {MAX_RANK}")

    counts = Counter(node.op_type for node in graph.node)
    histogram = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return GraphReport(
        node_count=len(graph.node),
        op_histogram=histogram,
        opset=opset,
        max_rank=max(ranks.values(), default=0),
        violations=violations,
    )
