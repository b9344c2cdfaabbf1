"""The one runner interface every backend implements.

A runner loads one model (a PyTorch module, an ONNX graph, a TensorRT engine, a Core ML package),
describes its inputs and outputs, and runs NCHW float32 batches, returning numpy arrays. Verification,
parity and the latency benchmark only ever talk to this interface, so a new backend is one new runner.

Optional benchmark hooks (``mfdeploy bench``; defaults below do nothing, override what your backend has):

- ``benchmark_caveat``: a class attribute, set when this runner's timings are not those of the real
  deployment runtime (e.g. a Core ML *evaluator* on Linux is not the latency of a phone). The benchmark
  copies it next to every figure it reports for the runner.
- ``pop_device_timings()``: per-``run()`` device-side times the host clock cannot see (TensorRT: CUDA
  events around ``execute_async_v3`` give GPU compute time apart from host-device copies, as trtexec
  reports it).
- ``profile_layers()``: per-layer times (ONNX Runtime's profiler, TensorRT's IProfiler) or per-op device
  and estimated cost (Core ML's MLComputePlan). The benchmark asks for it by passing ``profile=True`` to
  the target's ``from_artifact`` and measures latency on a separate, non-profiling runner.

``from_artifact(artifact, spec, **options)`` receives only the options the user set (``threads``,
``provider``, ``compute_units``, ``profile``) and must ignore the ones that do not concern it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


class TargetUnavailable(Exception):
    """This target cannot run here (missing file, library or hardware); ``reason`` says which and what to do.

    Defined beside the runner interface because runners raise it too (an engine built for another
    host), and a runner must not import the registry that loads it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BatchUnsupported(TargetUnavailable):
    """This runner cannot run this batch size (a TensorRT engine's optimization profile does not cover it):
    a skip for that batch alone, not for the target."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (ints, or a name for a dynamic axis) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model requires, or None if the batch axis is dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) else None


@dataclass(frozen=True)
class LayerRecord:
    """One layer (or fused group of layers) of a per-layer profile, as a backend reports it.

    ``name`` is the backend's own name (ONNX node names keep PyTorch module paths such as
    ``/blocks.3/to_mobile/MatMul``; TensorRT joins the names of the nodes it fused). ``scope`` is a
    better locator when the backend renamed the layer (ONNX Runtime's NCHWc rewrite: a tensor name
    that still carries the module path); None means ``name`` is the best there is.
    """

    name: str
    op: str | None = None
    #: Typical time of this layer in one inference, milliseconds (None where only a cost estimate exists).
    time_ms: float | None = None
    #: How many calls ``time_ms`` summarises.
    calls: int = 0
    #: Where it ran: "CPU", "GPU", "NeuralEngine", an execution provider name...
    device: str | None = None
    #: Relative estimated cost (Core ML MLComputePlan), None where measured times exist.
    estimated_cost: float | None = None
    scope: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "time_ms": self.time_ms,
            "calls": self.calls,
            "device": self.device,
            "estimated_cost": self.estimated_cost,
            "scope": self.scope,
        }


class Runner(abc.ABC):
    """Base class: ``with runner:`` loads on entry and releases on exit."""

    #: Short backend name used in target lists and reports ("torch", "onnxruntime", ...).
    backend: str = "base"
    #: Numeric precision of the model it runs: "fp32", "fp16" or "int8".
    precision: str = "fp32"

    def __init__(self) -> None:
        self._loaded = False

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Runner":
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> None:
        """Create the session/engine. Idempotent."""
        if not self._loaded:
            self._load()
            self._loaded = True

    @property
    def loaded(self) -> bool:
        """Whether the session/engine exists now (whoever loaded it closes it)."""
        return self._loaded

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    @abc.abstractmethod
    def _load(self) -> None: ...

    def _close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Release resources; most backends only drop references."""

    # -- description -----------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How reports name this runner (backend plus whatever distinguishes it: provider, precision)."""
        return self.backend if self.precision == "fp32" else f"{self.backend} {self.precision}"

    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @classmethod
    def host_unavailable_reason(cls) -> str | None:
        """Why this backend cannot run on this host at all (library or hardware missing), or None."""
        return None

    def batch_unsupported_reason(self, batch: int) -> str | None:
        """Why a dynamic-batch model cannot run ``batch`` here (one line, with the fix), or None. A fixed
        batch is ``inputs()[0].fixed_batch``; this is for a range (TensorRT's optimization profile)."""
        return None

    def cuda_graphs_state(self) -> dict[str, Any] | None:
        """What ``cuda_graphs=True`` did for this runner ({requested, used, fallback}); None when not asked
        for or not a backend that captures CUDA graphs."""
        return None

    # -- optional benchmark hooks (see the module docstring) ------------------------------------
    #: Why this runner's latency is not the deployment latency, if it is not (shown beside its figures).
    benchmark_caveat: str | None = None

    def pop_device_timings(self) -> dict[str, list[float]]:
        """Device-side milliseconds for each ``run()`` since the previous call, then forgotten.

        Keys: ``"gpu_compute"`` (enqueue of the inference to its end on the device, without host<->device
        copies: CUDA events recorded around ``execute_async_v3``), and where measured ``"h2d"`` and
        ``"d2h"`` (the copies). One value per ``run()``, in call order. The benchmark calls it after the
        warm-up (and discards that) and after the timed runs. Default: no device timings.
        """
        return {}

    def profile_layers(self) -> list[LayerRecord] | None:
        """The per-layer profile of the runs made since ``load()``, for a runner created with
        ``profile=True``; called once, after those runs. None: this backend has no per-layer profiler."""
        return None

    # -- execution -------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one NCHW float32 batch; return every output by name."""

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output (the logits)."""
        self.load()
        return self.run(np.ascontiguousarray(images, dtype=np.float32))[self.outputs()[0].name]

    def infer_all(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Run any number of images in batches of ``batch_size`` (padding the last one for a
        fixed-batch model) and return the concatenated logits."""
        fixed = self.inputs()[0].fixed_batch
        step = fixed or batch_size
        chunks = []
        for _, chunk in iterate_batches(images, step):
            if fixed and len(chunk) < fixed:
                padded = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
                chunks.append(self.infer(padded)[: len(chunk)])
            else:
                chunks.append(self.infer(chunk))
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def iterate_batches(array: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start index, slice) pairs covering ``array`` in steps of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(array), batch_size):
        yield start, array[start : start + batch_size]
