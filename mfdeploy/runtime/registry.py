"""Target names (what users type after --targets) -> the runner that runs them on an artifact.

Parity, eval and the benchmark only loop over target names and call :func:`create_runner`; adding a
backend means one runner module with a ``from_artifact`` constructor and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mfdeploy.artifacts import remake_command
from mfdeploy.errors import UserError
from mfdeploy.runtime.base import Runner, TargetUnavailable

__all__ = ["TARGETS", "TargetSpec", "TargetUnavailable", "create_runner", "parse_targets", "runner_class"]


@dataclass(frozen=True)
class TargetSpec:
    name: str
    backend: str  # torch, onnxruntime, tensorrt, coreml
    precision: str  # fp32, fp16, int8
    file: str  # the artifact file it runs
    runner: str  # "module:Class" with a classmethod from_artifact(artifact, spec, **options)

    def make_command(self, artifact: Any) -> str:
        """The command that makes ``file`` for this artifact: the export with its own model options, its
        calibration or its engine build (one table for every message, in :func:`remake_command`)."""
        return remake_command(artifact, self.file)


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec(
            "torch",
            "torch",
            "fp32",
            "weights.safetensors",
            "mfdeploy.runtime.torch_runner:TorchRunner",
        ),
        TargetSpec(
            "onnx",
            "onnxruntime",
            "fp32",
            "model.onnx",
            "mfdeploy.runtime.onnxruntime_runner:OnnxRuntimeRunner",
        ),
        TargetSpec(
            "onnx-fp16",
            "onnxruntime",
            "fp16",
            "model.fp16.onnx",
            "mfdeploy.runtime.onnxruntime_runner:OnnxRuntimeRunner",
        ),
        TargetSpec(
            "onnx-int8",
            "onnxruntime",
            "int8",
            "model.int8.onnx",
            "mfdeploy.runtime.onnxruntime_runner:OnnxRuntimeRunner",
        ),
        TargetSpec(
            "trt-fp32",
            "tensorrt",
            "fp32",
            "model.fp32.plan",
            "mfdeploy.runtime.tensorrt_runner:TensorRTRunner",
        ),
        TargetSpec(
            "trt-fp16",
            "tensorrt",
            "fp16",
            "model.fp16.plan",
            "mfdeploy.runtime.tensorrt_runner:TensorRTRunner",
        ),
        TargetSpec(
            "trt-int8",
            "tensorrt",
            "int8",
            "model.int8.plan",
            "mfdeploy.runtime.tensorrt_runner:TensorRTRunner",
        ),
        TargetSpec(
            "coreml",
            "coreml",
            "fp16",
            "model.mlpackage",
            "mfdeploy.runtime.coreml_runner:CoreMLRunner",
        ),
    )
}


def parse_targets(text: str | Sequence[str]) -> list[str]:
    """ "onnx,onnx-int8" -> ["onnx", "onnx-int8"], rejecting unknown names with the list of valid ones."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        what = f"unknown target {', '.join(map(repr, unknown))}" if unknown else "no target given"
        raise UserError(f"{what}; valid targets are {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def create_runner(name: str, artifact: Any, **options: Any) -> Runner:
    """A runner for target ``name`` on ``artifact``; TargetUnavailable if it cannot run on this host."""
    spec = TARGETS[name]
    found = runner_class(name)
    # what this host lacks comes first: the missing file is the second problem where TensorRT cannot run
    host_reason = found.host_unavailable_reason()
    missing = None
    if not artifact.path(spec.file).exists():
        missing = f"{artifact.root} has no {spec.file}; make it with `{spec.make_command(artifact)}`"
    if host_reason is not None:
        raise TargetUnavailable(host_reason + (f"; and {missing}" if missing else ""))
    if missing is not None:
        raise TargetUnavailable(missing)
    return found.from_artifact(artifact, spec, **options)


def runner_class(name: str) -> type[Runner]:
    """The runner class of target ``name``; TargetUnavailable if its backend library is missing."""
    spec = TARGETS[name]
    module_name, class_name = spec.runner.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("mfdeploy"):
            raise TargetUnavailable(f"the {spec.backend} backend is not part of this mfdeploy version") from None
        raise TargetUnavailable(f"{spec.backend} needs the Python package {exc.name!r}, not installed here") from None
    return getattr(module, class_name)
