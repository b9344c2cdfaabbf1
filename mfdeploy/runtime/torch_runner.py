"""PyTorch eager: the reference every other backend is compared with."""

from __future__ import annotations

import numpy as np
import torch

from mfdeploy.artifacts import WEIGHTS_FILE
from mfdeploy.runtime.base import Runner, TensorSpec


class TorchRunner(Runner):
    """Runs a Mobile-Former module in eval mode on the CPU, in float32."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, imgsz: int, threads: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.imgsz = imgsz
        self.threads = threads

    @classmethod
    def from_artifact(cls, artifact, spec=None, threads: int | None = None, **_: object) -> "TorchRunner":
        """The model an artifact was exported from, rebuilt from its stored weights."""
        from mfdeploy.model.weights import load_model

        weights = artifact.require(WEIGHTS_FILE, "re-export the artifact to store its weights")
        loaded = load_model(size=artifact.size, weights=weights, num_classes=artifact.num_classes)
        return cls(loaded.model, artifact.imgsz, threads)

    def _load(self) -> None:
        # torch's thread count is the process's: set it while the runner is open, and put it back when it
        # closes, so that a library user's process (or the next runner) is not left with this one's setting.
        self._threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def _close(self) -> None:
        torch.set_num_threads(self._threads_before)

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("images", ("batch", self.model.in_chans, self.imgsz, self.imgsz))]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", ("batch", self.model.num_classes))]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(images))
        return {"logits": logits.numpy()}
