"""What `mfdeploy train` can be asked. Apart from the loop so that the command line reads these defaults
without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from mfdeploy.images.datasets import BUILTIN_DIGITS

DEFAULT_TRAIN_SIZE = "26m"
MAX_LEARNING_RATE = 10.0  # AdamW diverges long before; a larger value is a typo
MAX_WEIGHT_DECAY = 10.0


@dataclass
class TrainConfig:
    size: str | None = None  # None: the --weights checkpoint's size, else DEFAULT_TRAIN_SIZE
    arch: str | None = None  # None: the --weights checkpoint's family, else seed
    data: str = BUILTIN_DIGITS
    epochs: int = 10
    imgsz: int = 64
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    seed: int = 0


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no run could use (one line naming the flag or field and its range) before any data
    is loaded: the same rules as every other command's counts, sizes and seeds."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.option_values import MAX_BATCH, MAX_EPOCHS, check_int, check_number, check_positive, check_seed

    check_int(cfg.epochs, "--epochs", 1, MAX_EPOCHS)
    check_imgsz(cfg.imgsz)
    check_int(cfg.batch_size, "--batch-size", 1, MAX_BATCH)
    check_positive(cfg.lr, "--lr", MAX_LEARNING_RATE)
    check_number(cfg.weight_decay, "weight_decay", 0.0, MAX_WEIGHT_DECAY)
    check_number(cfg.label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
    check_number(cfg.warmup_epochs, "warmup_epochs", 0.0, float(cfg.epochs))
    check_seed(cfg.seed)
