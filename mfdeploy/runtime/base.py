"""The one runner interface every backend implements.

A runner loads one model (a PyTorch module, an ONNX graph, a TensorRT engine, a Core ML package),
describes its inputs and outputs, and runs NCHW float32 batches, returning numpy arrays. Verification,
parity and the latency benchmark only ever talk to this interface, so a new backend is one new runner.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


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
