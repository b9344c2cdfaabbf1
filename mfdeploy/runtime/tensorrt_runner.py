"""TensorRT engines behind the common runner interface.

Device memory comes from torch CUDA tensors rather than cuda-python: torch is already a dependency of
every mfdeploy host, its caching allocator, streams, events and CUDA graphs are all we need, and a CUDA
build of torch is what a GPU host has anyway, so no second CUDA binding has to be installed and kept in
step with the driver. Tensor addresses are set by name and the engine runs with execute_async_v3; a
dynamic batch is handled by setting the input shape per call. Optional CUDA graphs capture one launch per
batch size and replay it, in trtexec's order: addresses set, one plain ``execute_async_v3`` on those
addresses (TensorRT allocates lazily on the first launch, which a capture must not contain), then the
capture in thread-local mode (``torch.cuda.graph`` defaults to global mode; trtexec uses
``cudaStreamCaptureModeThreadLocal``) and replays; a capture that fails is reported once and the runner
falls back to plain launches.

Every TensorRT call whose return value means failure (None, False) is checked and raises naming the call.
The engine's optimization-profile range (``get_tensor_profile_shape``) is read at load; a batch outside it
is refused in one line naming the range and the build-engine command that covers it.

This module cannot run on the project's CPU machines; it is kept thin and written against the documented
TensorRT 10/11 API, and the GPU tests exercise it where the hardware exists.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mfdeploy.runtime.base import BatchUnsupported, LayerRecord, Runner, TargetUnavailable, TensorSpec
from mfdeploy.runtime.tensorrt_env import check_engine_compatible, host_info, read_sidecar, tensorrt_unavailable_reason


class _LayerTimes:
    """Collects TensorRT's per-layer times (IProfiler) across runs."""

    def __init__(self, trt: Any) -> None:
        outer = self
        self.times: dict[str, list[float]] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                outer.times.setdefault(layer_name, []).append(ms)

        self.profiler = Profiler()


class TensorRTRunner(Runner):
    backend = "tensorrt"

    def __init__(
        self, plan_path, entry: dict[str, Any], rebuild_command: str, cuda_graphs: bool = False, profile: bool = False
    ) -> None:
        super().__init__()
        self.plan_path = plan_path
        self.entry = entry
        self.precision = entry.get("precision", "fp32")
        self.rebuild_command = rebuild_command
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._graph_fallback: str | None = None  # why CUDA graphs were given up (first failure), else None
        self.batch_range: tuple[int, int, int] | None = None  # the engine's profile min/opt/max batch
        self.profile = profile
        self._layer_times: _LayerTimes | None = None
        self._gpu_ms: list[float] = []

    @classmethod
    def host_unavailable_reason(cls) -> str | None:
        return tensorrt_unavailable_reason()

    @classmethod
    def from_artifact(
        cls, artifact, spec, cuda_graphs: bool = False, profile: bool = False, **_: object
    ) -> "TensorRTRunner":
        """The artifact's engine for ``spec`` (the registry has checked host_unavailable_reason first)."""
        command = spec.make_command(artifact)
        plan = artifact.require(spec.file, f"build it with `{command}`")
        entry = read_sidecar(artifact.root)["engines"].get(spec.precision)
        if entry is None:
            raise TargetUnavailable(f"{artifact.root}/engine.json does not describe {spec.file}; rebuild the engine")
        check_engine_compatible(entry, host_info(), command)
        return cls(plan, entry, command, cuda_graphs, profile)

    @property
    def label(self) -> str:
        return (
            f"tensorrt {self.precision} ({self.entry.get('gpu_name')}, TensorRT {self.entry.get('tensorrt_version')})"
        )

    def _load(self) -> None:
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT Runtime.deserialize_cuda_engine returned None for {self.plan_path}; "
                f"rebuild it with `{self.rebuild_command}`"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(
                f"TensorRT ICudaEngine.create_execution_context returned None for {self.plan_path} (out of GPU memory?)"
            )
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if self.engine.get_tensor_shape(self.input_names[0])[0] < 0:  # a dynamic batch: one profile, index 0
            low, opt, high = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
            self.batch_range = (int(low[0]), int(opt[0]), int(high[0]))
        if self.profile:
            # IProfiler reports each layer's time after every execution; CUDA graphs would hide the layers.
            self._layer_times = _LayerTimes(trt)
            self.context.profiler = self._layer_times.profiler

    def _close(self) -> None:
        self._graphs.clear()
        self.context = self.engine = self.runtime = None

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(d if d >= 0 else "batch" for d in self.engine.get_tensor_shape(name))
        dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name
        return TensorSpec(name, shape, dtype)

    def inputs(self) -> list[TensorSpec]:
        self.load()
        return [self._spec(n) for n in self.input_names]

    def outputs(self) -> list[TensorSpec]:
        self.load()
        return [self._spec(n) for n in self.output_names]

    def batch_unsupported_reason(self, batch: int) -> str | None:
        """Why this engine cannot run ``batch`` (outside its optimization profile), with the command that
        builds one that can; None when it can. Static engines are covered by ``fixed_batch``."""
        self.load()
        return profile_refusal(self.batch_range, batch, self.precision, self.rebuild_command)

    def _bind(self, images) -> dict[str, Any]:
        torch = self.torch
        name = self.input_names[0]
        if not self.context.set_input_shape(name, tuple(images.shape)):
            raise RuntimeError(f"TensorRT IExecutionContext.set_input_shape({name!r}, {tuple(images.shape)}) failed")
        if not self.context.set_tensor_address(name, images.data_ptr()):
            raise RuntimeError(f"TensorRT IExecutionContext.set_tensor_address({name!r}) failed")
        outputs = {}
        for out in self.output_names:
            dtype = torch.from_numpy(np.zeros(0, self.trt.nptype(self.engine.get_tensor_dtype(out)))).dtype
            outputs[out] = torch.empty(tuple(self.context.get_tensor_shape(out)), dtype=dtype, device="cuda")
            if not self.context.set_tensor_address(out, outputs[out].data_ptr()):
                raise RuntimeError(f"TensorRT IExecutionContext.set_tensor_address({out!r}) failed")
        return outputs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT IExecutionContext.execute_async_v3 returned False (see its log above)")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.load()
        reason = self.batch_unsupported_reason(len(images))
        if reason is not None:
            raise BatchUnsupported(reason)
        torch = self.torch
        with torch.cuda.stream(self.stream):
            device_images = torch.from_numpy(images).to("cuda", non_blocking=True)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            key = tuple(images.shape)
            if self.cuda_graphs and key in self._graphs:
                static_in, outputs, graph = self._graphs[key]
                static_in.copy_(device_images)
                start.record(self.stream)
                graph.replay()
                end.record(self.stream)
            else:
                outputs = self._bind(device_images)
                start.record(self.stream)
                self._execute()
                end.record(self.stream)
                if self.cuda_graphs and self._layer_times is None and self._graph_fallback is None:
                    self._capture(key, device_images)
            host = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
        self.stream.synchronize()
        self._gpu_ms.append(start.elapsed_time(end))
        return host

    def _capture(self, key: tuple[int, ...], device_images) -> None:
        """Capture one launch for this batch shape; later calls of the same shape replay it.

        trtexec's sequence: the addresses the graph will replay are set, one plain launch on them first
        (TensorRT's lazy allocations and shape work must not land in the capture), then the capture in
        thread-local mode. A failure warns once and leaves the runner on plain launches for good."""
        torch = self.torch
        try:
            static_in = device_images.clone()
            outputs = self._bind(static_in)
            self._execute()  # warm-up launch on the captured addresses
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._execute()
        except Exception as exc:  # noqa: BLE001 - any capture failure means plain launches, never a crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._graph_fallback = f"CUDA graph capture failed ({first}); using plain execute_async_v3 launches"
            warnings.warn(f"{self.label}: {self._graph_fallback}", RuntimeWarning, stacklevel=3)
            self.stream.synchronize()
            return
        self._graphs[key] = (static_in, outputs, graph)

    def cuda_graphs_state(self) -> dict[str, Any] | None:
        """What --cuda-graphs did: requested, used (a graph was captured and replayed), fallback reason."""
        if not self.cuda_graphs:
            return None
        if self._layer_times is not None:
            return {"requested": True, "used": False, "fallback": "per-layer profiling runs without CUDA graphs"}
        return {"requested": True, "used": bool(self._graphs), "fallback": self._graph_fallback}

    # -- benchmark hooks (runtime/base.py) -------------------------------------------------------
    def pop_device_timings(self) -> dict[str, list[float]]:
        """GPU time of each run's engine execution alone (CUDA events around execute_async_v3, or the graph
        replay), without the host-device copies: what trtexec calls GPU compute time."""
        timings, self._gpu_ms = self._gpu_ms, []
        return {"gpu_compute": timings} if timings else {}

    def profile_layers(self) -> list[LayerRecord] | None:
        """Median milliseconds per engine layer from TensorRT's IProfiler (a runner made with profile=True).
        TensorRT names a fused layer after the ONNX nodes it absorbed, so module paths survive."""
        if self._layer_times is None:
            return None
        return [
            LayerRecord(name=name, time_ms=float(np.median(values)), calls=len(values), device="GPU")
            for name, values in self._layer_times.times.items()
        ]


def profile_refusal(batch_range: tuple[int, int, int] | None, batch: int, precision: str, rebuild: str) -> str | None:
    """One line refusing ``batch`` outside the engine's profile ``batch_range`` (min, opt, max), naming the
    range and the build-engine command (``rebuild``, e.g. ``mfdeploy build-engine ART --precision fp16``)
    whose profile covers both the old range and ``batch``; None when ``batch`` is inside it."""
    if batch_range is None:
        return None
    low, opt, high = batch_range
    if low <= batch <= high:
        return None
    new_low, new_high = min(low, batch), max(high, batch)
    command = f"{rebuild} --min-batch {new_low} --opt-batch {min(max(opt, new_low), new_high)} --max-batch {new_high}"
    return (
        f"the {precision} engine's optimization profile covers batch {low}..{high} (opt {opt}), not {batch}; "
        f"rebuild it with `{command}`"
    )
