"""ONNX Runtime: CPU by default, CUDA or TensorRT execution providers where onnxruntime-gpu has them."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.runtime.base import LayerRecord, Runner, TensorSpec

# Provider chains: the named provider first, falling back to the CPU for any op it does not take.
DEFAULT_PROVIDER = "cpu"  # what --provider means when it is not given
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
        provider: str | None = None,
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
        optimization: str = "all",
        profile: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.provider = provider or DEFAULT_PROVIDER
        self.providers = check_provider(self.provider)
        self.threads = threads
        self.extra_outputs = list(extra_outputs)
        self.optimization = optimization
        self.profile = profile
        self.session = None
        self._profile_dir: Path | None = None

    @classmethod
    def from_artifact(
        cls, artifact, spec, provider: str | None = None, threads: int | None = None, profile: bool = False, **_: object
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

        options = _session_options(self.threads, self.optimization)
        options.enable_profiling = self.profile
        if self.profile:
            # The trace and the optimized graph go to a private folder, not the working directory: the
            # optimized graph is how renamed nodes are traced back to module paths (profile_layers).
            self._profile_dir = Path(tempfile.mkdtemp(prefix="mfdeploy-ort-profile-"))
            options.profile_file_prefix = str(self._profile_dir / "trace")
            options.optimized_model_filepath = str(self._profile_dir / "optimized.onnx")
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
        if self._profile_dir is not None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None

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

    def profile_layers(self) -> list[LayerRecord] | None:
        """Per-node kernel times from ORT's profiler trace, for a runner made with ``profile=True``.

        A node's ``time_ms`` is the median of its per-run kernel times, so the first (cold) run does not
        skew it. Nodes that ORT's layout optimizer created or renamed (``ReorderOutput_token_97``,
        ``..._nchwc``) get a ``scope``: the first of their input/output tensor names in the optimized graph
        that carries a module path, so reports can still place them in the model.
        """
        if not self.profile:
            return None
        self.load()
        trace = self.end_profiling()
        if not trace:
            return None
        events = json.loads(Path(trace).read_text())
        durations: dict[str, list[float]] = defaultdict(list)
        meta: dict[str, tuple[str | None, str | None]] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
                continue
            node = name[: -len("_kernel_time")]
            durations[node].append(float(event.get("dur", 0)) / 1e3)
            args = event.get("args", {})
            meta[node] = (args.get("op_name"), args.get("provider"))
        scopes = _node_scopes(self._profile_dir / "optimized.onnx") if self._profile_dir else {}
        return [
            LayerRecord(
                name=node,
                op=meta[node][0],
                time_ms=statistics.median(values),
                calls=len(values),
                device=meta[node][1],
                scope=None if node.startswith("/") else scopes.get(node),
            )
            for node, values in durations.items()
        ]


def optimized_graph(path: str | os.PathLike[str], threads: int | None = None, optimization: str = "all"):
    """The graph ONNX Runtime's CPU provider actually runs after its optimizations (``optimization``: none,
    basic, extended or all; "all" adds the CPU-specific NCHWc layout, whose blocks depend on the CPU)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = _session_options(threads, optimization)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=PROVIDERS["cpu"])
        return onnx.load(options.optimized_model_filepath, load_external_data=False)


def optimized_op_counts(path: str | os.PathLike[str], threads: int | None = None) -> Counter[str]:
    """Op histogram of the graph ONNX Runtime's CPU provider actually runs after its optimizations: which
    Q/DQ pairs it fused into integer kernels, which casts it inserted (why a graph runs slower on the CPU)."""
    return Counter(node.op_type for node in optimized_graph(path, threads).graph.node)


def _session_options(threads: int | None, optimization: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


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


def _node_scopes(optimized: Path) -> dict[str, str]:
    """Node name -> the first output (else input) tensor name that carries a module path ("/blocks.3/...")."""
    import onnx

    if not optimized.is_file():
        return {}
    try:
        graph = onnx.load(str(optimized), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a graph ORT wrote but onnx cannot parse only costs the scopes
        return {}
    scopes = {}
    for node in graph.node:
        for tensor in [*node.output, *node.input]:  # its own output first: an input may come from the stage before
            if tensor.startswith("/"):
                scopes[node.name] = tensor
                break
    return scopes
