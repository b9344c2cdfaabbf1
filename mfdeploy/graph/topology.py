"""Small ONNX graph helpers shared by the export, calibration and lint code."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import onnx


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that computes it."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return dict(users)


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers and Constant-node outputs."""
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder the nodes so every node comes after the producers of its inputs (stable otherwise).

    Some rewriters (ONNX Runtime's float16 converter) append nodes at the end; onnx.checker and
    TensorRT's parser both need topological order.
    """
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                progressed.append(node)
        if len(progressed) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input near {pending[0].name}")
        pending = progressed
    _replace_nodes(graph, ordered)
    return model


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Make ``nodes`` (taken from ``graph``) its node list; they are copied first, since clearing the repeated
    field would leave the messages they refer to behind."""
    copies = [onnx.NodeProto() for _ in nodes]
    for target, source in zip(copies, nodes):
        target.CopyFrom(source)
    del graph.node[:]
    graph.node.extend(copies)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name the nodes of ``node``'s subgraphs (If, Loop, Scan) read, outer-scope names included."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def drop_unused_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes whose outputs no graph output depends on; returns how many went.

    ONNX ops have no side effects, so such a node only costs the tools that walk the graph after it.
    """
    needed = {output.name for output in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            needed |= _subgraph_inputs(node)
    dropped = len(graph.node) - len(kept)
    if dropped:
        _replace_nodes(graph, kept[::-1])
    return dropped


SHAPE_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


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
