"""PyTorch -> ONNX: export, pin static shapes, simplify, name, finalise.

Exporter choice (measured on this project's 2-core CPU host, 52m, torch 2.13, dynamic batch):

| exporter                     | export time | nodes, simplified  | ORT b1 / b8 (ms) | opset 17 |
|------------------------------|-------------|--------------------|------------------|----------|
| TorchScript (dynamo=False)   | 0.7-1.0 s   | 544 (after pinning) | 3.5 / 17.7      | yes      |
| dynamo (dynamic_shapes)      | 14.5 s      | 600                | 3.4 / 16.4       | no (18)  |

Both give the same logits (max abs error < 5e-7) at batch 1, 7 and 32. The TorchScript exporter is
deprecated, but it exports in a fifteenth of the time (the whole `mfdeploy export` has a 15 s budget),
honours opset 17 exactly (the dynamo exporter cannot write opsets below 18 and silently keeps 18), and
names every node after the module that made it (``/blocks.3/to_mobile/MatMul``), which parity
localisation needs. Its one cost, run-time shape arithmetic for dynamic-batch reshapes (854 nodes
instead of 544), is removed by :func:`pin_reshape_shapes`. So we use it; the dynamo exporter is the
path to take when torch removes the TorchScript one.

Simplifier choice, on the pinned graph: onnxslim 544 nodes in 0.9 s, every node keeps its module path;
onnxsim 609 nodes in 0.7 s (it rewrites 3-D MatMul+Add as Reshape+Gemm+Reshape for ORT's CPU Gemm and
leaves 112 fused nodes without a module name). Same latency (3.5 vs 3.5 ms at batch 1). onnxslim is
the default and pure Python; onnxsim stays an option (``--simplifier onnxsim``, extra ``onnxsim``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from mfdeploy import __version__
from mfdeploy.errors import UserError
from mfdeploy.graph.topology import constant_names, consumers, drop_unused_nodes, producers

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
MIN_OPSET = 17
EXPORTER = "torch.onnx TorchScript exporter (dynamo=False)"
SIMPLIFIERS = ("onnxslim", "onnxsim", "none")


def check_opset(opset: int) -> int:
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as max_opset

    if opset < MIN_OPSET:
        raise UserError(
            f"--opset {opset} is too old: opset {MIN_OPSET} is the first with LayerNormalization, which "
            f"TensorRT maps to its normalization layer; use --opset {MIN_OPSET} or newer"
        )
    if opset > max_opset:
        raise UserError(f"--opset {opset} is newer than this torch exports ({max_opset}); use {MIN_OPSET}..{max_opset}")
    return opset


def torch_to_onnx(model: torch.nn.Module, imgsz: int, batch: int | None, opset: int) -> onnx.ModelProto:
    """Export with the TorchScript exporter; ``batch=None`` makes the batch axis dynamic."""
    example = torch.zeros(batch or 2, model.in_chans, imgsz, imgsz)
    buffer = io.BytesIO()
    dynamic_axes = None if batch else {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    with warnings.catch_warnings():
        # The exporter's own deprecation notice; see the module docstring for why we still use it.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def _probe_shapes(model: onnx.ModelProto, names: list[str]) -> list[dict[str, tuple[int, ...]]]:
    """Shape of each named tensor in a run at batch 1 and one at batch 2 (ONNX Runtime, no graph
    optimisations, zeros as input)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    outputs = {value.name for value in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph_input = model.graph.input[0]
    chw = [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]
    runs = []
    for batch in (1, 2):
        x = np.zeros([batch, *chw], np.float32)
        values = session.run(names, {graph_input.name: x})
        runs.append({name: value.shape for name, value in zip(names, values)})
    return runs


def _batch_axis(one: tuple[int, ...], two: tuple[int, ...]) -> int | None:
    """The axis that holds the batch (the one that doubles from batch 1 to 2), -1 when none varies, None when
    the shapes vary in any other way."""
    varying = [axis for axis, (a, b) in enumerate(zip(one, two)) if a != b]
    if len(one) != len(two) or len(varying) > 1 or (varying and two[varying[0]] != 2 * one[varying[0]]):
        return None
    return varying[0] if varying else -1


def pin_reshape_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give every run-time-computed Reshape target a constant one, with -1 on the batch axis.

    For a dynamic batch the TorchScript exporter computes reshape targets at run time
    (Shape -> Slice -> Concat) even though only the batch axis varies. Running the graph at batch 1 and
    batch 2 shows each reshape's real output shape: the one axis that doubles is the batch (-1), every
    other axis is a constant. The shape arithmetic that computed the targets is then dead and is removed
    here (a third of an official 52m's nodes, which the simplifier would otherwise import and walk three
    times: it simplifies 0.5 s sooner, to the same bytes). Reshapes whose output does not vary that way are
    left alone; the export's verification runs the result at several batches. The shapes come from runs,
    not from ONNX shape inference (which :func:`name_batch_axis` uses on the simplified graph): on the raw
    export, inference with data propagation and the batch fixed computes 1 of the 50 run-time targets of an
    official 52m and 1 of 92 of a seed 52m.
    """
    graph = model.graph
    constants = constant_names(graph)
    dynamic = [node for node in graph.node if node.op_type == "Reshape" and node.input[1] not in constants]
    if not dynamic:
        return model, 0
    one, two = _probe_shapes(model, [node.output[0] for node in dynamic])
    pinned = 0
    for node in dynamic:
        shape = one[node.output[0]]
        axis = _batch_axis(shape, two[node.output[0]])
        if axis is None:
            continue
        target = list(shape)
        if axis >= 0:
            target[axis] = -1
        name = f"{node.name}/pinned_shape"
        graph.initializer.append(numpy_helper.from_array(np.asarray(target, np.int64), name))
        node.input[1] = name
        pinned += 1
    if pinned:
        drop_unused_nodes(graph)
    return model, pinned


def _static_shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[tuple[int, ...], int]]:
    """(shape, ONNX element type) of every tensor whose shape ONNX shape inference fully determines once the
    input's batch is ``batch``: with every dimension known, a Reshape's ``-1`` is computed, not invented."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    batch_dim = fixed.graph.input[0].type.tensor_type.shape.dim[0]
    batch_dim.ClearField("dim_param")
    batch_dim.dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = {}
    for value in inferred.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = (tuple(d.dim_value for d in dims), value.type.tensor_type.elem_type)
    return shapes


def _batch_multiple(size_at_batch_one: int) -> str:
    return BATCH_AXIS if size_at_batch_one == 1 else f"{size_at_batch_one}*{BATCH_AXIS}"


def name_batch_axis(model: onnx.ModelProto) -> int:
    """Record every intermediate tensor's shape in the graph, its batch axis named ``batch``; returns how many.

    ONNX shape inference loses the batch's name at each Reshape to a ``-1`` target: past one, a tensor's
    batch is a fresh unknown (``unk__59``), and ONNX Runtime cannot prove that the two inputs of a residual
    Add have the same shape. It then reshapes NCHWc tensors around such Adds instead of adding into the conv
    that produced one of them (official 52m: 12 Reshape and 4 Add ops more), and fuses no Add +
    LayerNormalization on [T, B, D] tokens into SkipLayerNormalization. Inferred with the batch fixed at 1
    and at 2, every shape is known (no activation is computed: an ORT run holding them all took 0.5 GB for
    508m at 224 px); the axis that doubles is the batch, or ``k`` times it where it is ``k`` at batch 1
    (tokens flattened with the batch: ``3*batch``), a name of its own that ONNX Runtime compares as it
    compares ``batch``. A tensor whose shape is not fully inferred, or varies any other way, keeps no
    recorded shape.
    """
    graph = model.graph
    outputs = {value.name for value in graph.output}
    names = list(dict.fromkeys(out for node in graph.node for out in node.output if out and out not in outputs))
    one, two = _static_shapes(model, 1), _static_shapes(model, 2)
    del graph.value_info[:]
    for name in names:
        if name not in one or name not in two:
            continue
        (shape, elem_type), (shape_at_two, _) = one[name], two[name]
        axis = _batch_axis(shape, shape_at_two)
        if axis is None:
            continue
        dims: list[int | str] = [_batch_multiple(size) if i == axis else size for i, size in enumerate(shape)]
        graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem_type, dims))
    return len(graph.value_info)


def simplify(model: onnx.ModelProto, simplifier: str) -> onnx.ModelProto:
    """Constant folding, dead-code removal and op fusion by onnxslim (default) or onnxsim."""
    if simplifier == "none":
        return model
    if simplifier == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    if simplifier == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise UserError("onnxsim is not installed: pip install 'mfdeploy[onnxsim]'") from None
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise UserError("onnxsim could not validate the simplified graph; use the default --simplifier onnxslim")
        return simplified
    raise UserError(f"unknown simplifier {simplifier!r}; choose one of {', '.join(SIMPLIFIERS)}")


def name_unscoped_nodes(model: onnx.ModelProto) -> int:
    """Give module-path names to nodes a simplifier created or left unnamed.

    Fused nodes lose the exporter's ``/module/path/Op`` name; each is named after the scope of the node
    that produces its first non-constant input (or consumes its output), so every node still maps back
    to a PyTorch module.
    """
    graph = model.graph
    producer, users_of = producers(graph), consumers(graph)
    used = {node.name for node in graph.node}
    renamed = 0
    for node in graph.node:
        if node.name.startswith("/"):
            continue
        neighbours = [producer[i] for i in node.input if i in producer]
        neighbours += [c for out in node.output for c in users_of.get(out, [])]
        scope = next((n.name.rsplit("/", 1)[0] for n in neighbours if n.name.startswith("/")), "")
        base = f"{scope}/{node.op_type}"
        name, index = base, 0
        while name in used:
            index += 1
            name = f"{base}_{index}"
        used.add(name)
        node.name = name
        renamed += 1
    return renamed


def finalize(model: onnx.ModelProto, metadata: dict[str, Any]) -> onnx.ModelProto:
    """Deterministic producer fields and metadata (no timestamps), no doc strings."""
    model.producer_name = "mfdeploy"
    model.producer_version = __version__
    model.doc_string = ""
    model.graph.doc_string = ""
    model.graph.name = "mobileformer"
    for node in model.graph.node:
        node.doc_string = ""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return model


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
