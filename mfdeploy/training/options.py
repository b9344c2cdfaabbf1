"""What `mfdeploy train` can be asked. Apart from the loop so that the command line reads these defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from mfdeploy.images.datasets import BUILTIN_DIGITS


@dataclass
class TrainConfig:
    size: str = "26m"
    data: str = BUILTIN_DIGITS
    epochs: int = 10
    imgsz: int = 64
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0
