"""A runner that does no work, so that what the harness itself costs per call can be measured.

Registered for the benchmark's own use only (target name ``noop``): ``--targets`` does not accept it and
the registry does not list it. ``benchmarks/harness_overhead.py`` times it with the same loop, in the same
kind of child process, as every real target.
"""

from __future__ import annotations

import numpy as np

from mfdeploy.runtime.base import Runner, TensorSpec

NOOP_TARGET = "noop"


class NoopRunner(Runner):
    """Returns a preallocated logits array without looking at its input."""

    backend = "noop"
    benchmark_caveat = "does no work: its latency is the benchmark harness's own per-call overhead"

    def __init__(self, in_chans: int, imgsz: int, num_classes: int) -> None:
        super().__init__()
        self.in_chans, self.imgsz, self.num_classes = in_chans, imgsz, num_classes
        self._outputs: dict[int, dict[str, np.ndarray]] = {}

    @classmethod
    def from_artifact(cls, artifact, spec=None, **_: object) -> "NoopRunner":
        return cls(artifact.in_chans, artifact.imgsz, artifact.num_classes)

    def _load(self) -> None:
        pass

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", ("batch", self.in_chans, self.imgsz, self.imgsz))]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.num_classes))]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = images.shape[0]
        out = self._outputs.get(batch)
        if out is None:
            out = self._outputs[batch] = {"logits": np.zeros((batch, self.num_classes), np.float32)}
        return out
