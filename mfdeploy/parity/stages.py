"""Where a backend parts from PyTorch: stage-by-stage comparison for ONNX graphs.

PyTorch gives each stage's outputs through forward hooks (stem, lite bottleneck, each block's feature
map and tokens, the final bridge's tokens, the channel conv, the head's logits). In an exported graph
every node keeps its module path, so a stage's outputs are the tensors its nodes produce that something
outside the stage reads; where several have the right shape (a simplifier can merge identical nodes
across blocks), the one whose values match PyTorch on the FP32 graph is taken. The FP16 and INT8 graphs
keep those tensor names, so one mapping serves all ONNX graphs of an artifact.

Only these stage outputs are exposed as extra graph outputs: marking every tensor as an output would
change what ONNX Runtime fuses, and so what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from mfdeploy.graph.topology import consumers
from mfdeploy.model.stages import stage_modules


@dataclass(frozen=True)
class Stage:
    name: str  # "blocks.3/feature_map"
    scope: str  # ONNX name prefix, "/blocks.3/"
    index: int  # which output of the module
    rank: int


def torch_stage_outputs(model: torch.nn.Module, images: np.ndarray) -> tuple[list[Stage], dict[str, np.ndarray]]:
    """Run the model once with hooks; return the stages in order and each stage's output."""
    captured: dict[str, np.ndarray] = {}
    stages: list[Stage] = []
    hooks = []
    for module_name, module in stage_modules(model):

        def hook(_module, _inputs, output, module_name=module_name):
            outputs = output if isinstance(output, tuple) else (output,)
            for index, tensor in enumerate(outputs):
                suffix = {4: "feature_map", 3: "tokens", 2: "logits"}.get(tensor.dim(), f"output{index}")
                name = f"{module_name}/{suffix}"
                captured[name] = tensor.detach().float().numpy().copy()
                if not any(s.name == name for s in stages):
                    stages.append(Stage(name, f"/{module_name}/", index, tensor.dim()))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model.eval()(torch.from_numpy(images))
    finally:
        for handle in hooks:
            handle.remove()
    return stages, captured


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """||candidate - reference|| / ||reference|| (inf for NaN/Inf or a shape mismatch)."""
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if candidate.shape != reference.shape or not np.isfinite(candidate).all():
        return float("inf")
    return float(np.linalg.norm(candidate - reference) / max(np.linalg.norm(reference), 1e-30))


def _boundary_tensors(model: onnx.ModelProto, scope: str) -> list[tuple[str, str]]:
    """(tensor, producer op) for every tensor produced inside ``scope`` and read outside it (or output)."""
    graph = model.graph
    users = consumers(graph)
    outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if not node.name.startswith(scope):
            continue
        for tensor in node.output:
            readers = users.get(tensor, [])
            if tensor in outputs or any(not r.name.startswith(scope) for r in readers):
                found.append((tensor, node.op_type))
    return found


def map_stages(graph_path, stages: list[Stage], reference: dict[str, np.ndarray], images: np.ndarray) -> dict[str, str]:
    """Stage name -> the ONNX tensor that holds it, resolved on the FP32 graph."""
    import onnxruntime as ort

    model = onnx.load(str(graph_path))
    output_name = model.graph.output[0].name
    candidates: dict[str, list[tuple[str, str]]] = {}
    wanted: set[str] = set()
    for stage in stages:
        if stage.name.startswith("head/"):
            continue
        found = _boundary_tensors(model, stage.scope)
        candidates[stage.name] = found
        wanted.update(tensor for tensor, _ in found)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for tensor in wanted - existing:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: images})))

    mapping: dict[str, str] = {}
    for stage in stages:
        if stage.name.startswith("head/"):
            mapping[stage.name] = output_name
            continue
        target = reference[stage.name]
        shaped = [(t, op) for t, op in candidates[stage.name] if values[t].shape == target.shape]
        if len(shaped) > 1:  # a stage's output is never a norm's output; prefer the others
            shaped = [(t, op) for t, op in shaped if op != "LayerNormalization"] or shaped
        if shaped:
            mapping[stage.name] = min(shaped, key=lambda item: relative_error(values[item[0]], target))[0]
    return mapping


def stage_errors(
    graph_path,
    mapping: dict[str, str],
    reference: dict[str, np.ndarray],
    images: np.ndarray,
    provider: str | None = None,
) -> dict[str, float]:
    """Relative L2 error of every mapped stage output of ``graph_path`` against PyTorch."""
    from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    model = onnx.load(str(graph_path), load_external_data=False)
    produced = {out for node in model.graph.node for out in node.output}
    present = {stage: tensor for stage, tensor in mapping.items() if tensor in produced}
    with OnnxRuntimeRunner(graph_path, provider=provider, extra_outputs=list(present.values())) as runner:
        values = runner.run(images)
    return {
        stage: relative_error(values[tensor].astype(np.float32), reference[stage]) for stage, tensor in present.items()
    }
