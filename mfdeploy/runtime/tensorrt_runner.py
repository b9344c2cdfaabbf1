"""TensorRT engines behind the common runner interface.

Device memory comes from torch CUDA tensors rather than cuda-python: torch is already a dependency of
every mfdeploy host, its caching allocator, streams, events and CUDA graphs are all we need, and a CUDA
build of torch is what a GPU host has anyway, so no second CUDA binding has to be installed and kept in
step with the driver. Tensor addresses are set by name and the engine runs with execute_async_v3; a
dynamic batch is handled by setting the input shape per call. Optional CUDA graphs capture one launch per
batch size and replay it.

This module cannot run on the project's CPU machines; it is kept thin and written against the documented
TensorRT 10/11 API, and the GPU tests exercise it where the hardware exists.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfdeploy.runtime.base import LayerRecord, Runner, TargetUnavailable, TensorSpec
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
            raise RuntimeError(f"TensorRT could not deserialize {self.plan_path}; rebuild: {self.rebuild_command}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
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

    def _bind(self, images) -> dict[str, Any]:
        torch = self.torch
        name = self.input_names[0]
        self.context.set_input_shape(name, tuple(images.shape))
        self.context.set_tensor_address(name, images.data_ptr())
        outputs = {}
        for out in self.output_names:
            dtype = torch.from_numpy(np.zeros(0, self.trt.nptype(self.engine.get_tensor_dtype(out)))).dtype
            outputs[out] = torch.empty(tuple(self.context.get_tensor_shape(out)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(out, outputs[out].data_ptr())
        return outputs

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.load()
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
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
                end.record(self.stream)
                if self.cuda_graphs and self._layer_times is None:
                    self._capture(key, device_images)
            host = {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
        self.stream.synchronize()
        self._gpu_ms.append(start.elapsed_time(end))
        return host

    def _capture(self, key: tuple[int, ...], device_images) -> None:
        """Capture one launch for this batch shape; later calls of the same shape replay it."""
        torch = self.torch
        static_in = device_images.clone()
        outputs = self._bind(static_in)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self._graphs[key] = (static_in, outputs, graph)

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
