"""ONNX Runtime: CPU by default, CUDA or TensorRT execution providers where onnxruntime-gpu has them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.runtime.base import Runner, TensorSpec

# Provider chains: the named provider first, falling back to the CPU for any op it does not take.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


def check_provider(provider: str) -> list[str]:
    """The provider chain for ``provider``, or a UserError saying what this onnxruntime build lacks."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    chain = PROVIDERS[provider]
    available = ort.get_available_providers()
    if chain[0] not in available:
        raise UserError(
            f"ONNX Runtime provider {chain[0]} is not available here (this build has {', '.join(available)}); "
            "install onnxruntime-gpu on a CUDA host: pip install 'mfdeploy[gpu]'"
        )
    return chain


class OnnxRuntimeRunner(Runner):
    """One InferenceSession over an .onnx file. ``extra_outputs`` exposes intermediate tensors by name."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        provider: str = "cpu",
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
        optimization: str = "all",
        profile: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.provider = provider
        self.providers = check_provider(provider)
        self.threads = threads
        self.extra_outputs = list(extra_outputs)
        self.optimization = optimization
        self.profile = profile
        self.session = None

    @classmethod
    def from_artifact(
        cls, artifact, spec, provider: str = "cpu", threads: int | None = None, profile: bool = False, **_: object
    ) -> "OnnxRuntimeRunner":
        """The graph of target ``spec`` (model.onnx, model.fp16.onnx, model.int8.onnx) in ``artifact``."""
        path = artifact.require(spec.file, f"make it with `{spec.make_command(artifact)}`")
        runner = cls(path, provider=provider, threads=threads, profile=profile)
        runner.precision = spec.precision
        return runner

    @property
    def label(self) -> str:
        precision = "" if self.precision == "fp32" else f" {self.precision}"
        return f"onnxruntime{precision} ({self.providers[0]})"

    def _load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = self.profile
        model: str | bytes = str(self.path)
        if self.extra_outputs:
            model = _with_outputs(self.path, self.extra_outputs)
        try:
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad graphs
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"ONNX Runtime cannot load {self.path}: {message}") from None

    def _close(self) -> None:
        self.session = None

    def _specs(self, values) -> list[TensorSpec]:
        return [
            TensorSpec(
                v.name, tuple(d if isinstance(d, int) else str(d) for d in v.shape), _ORT_TYPES.get(v.type, v.type)
            )
            for v in values
        ]

    def inputs(self) -> list[TensorSpec]:
        self.load()
        return self._specs(self.session.get_inputs())

    def outputs(self) -> list[TensorSpec]:
        self.load()
        return self._specs(self.session.get_outputs())

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.load()
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {self.session.get_inputs()[0].name: images})
        return dict(zip(names, values))

    def end_profiling(self) -> str | None:
        """Stop ORT's profiler and return the path of its JSON trace."""
        return self.session.end_profiling() if self.session is not None and self.profile else None


def _with_outputs(path: Path, names: Sequence[str]) -> bytes:
    """The graph with ``names`` added as outputs (shape-inferred types), serialised for a session."""
    import onnx

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name in existing:
            continue
        if name not in known:
            raise UserError(f"{path.name} has no tensor named {name!r}")
        model.graph.output.append(known[name])
    return model.SerializeToString()
