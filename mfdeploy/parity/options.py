"""What `mfdeploy parity` and `mfdeploy eval` can be asked, and the checks made before any work.

Apart from the harnesses so that the command line reads these defaults without importing ONNX or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mfdeploy.images.datasets import BUILTIN_DIGITS
from mfdeploy.images.labelled import ACCURACY_BATCH
from mfdeploy.images.sets import BUILTIN
from mfdeploy.option_values import MAX_IMAGES, check_batch, check_int
from mfdeploy.thresholds import check_overrides

DEFAULT_TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "coreml", "trt-fp16", "trt-int8")
PARITY_DATA = BUILTIN  # without a training record: built-in photographs


@dataclass
class ParityOptions:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    # None: the data the model was trained on (its manifest's model.trained_on), else PARITY_DATA
    data: str | None = None
    n: int = 64
    batch: int = 8
    layers: bool = False
    provider: str | None = None  # ONNX Runtime execution provider; None: the runner's default (cpu)
    overrides: dict[str, float | None] = field(default_factory=dict)


def check_options(options: ParityOptions) -> list[str]:
    from mfdeploy.runtime.registry import parse_targets

    targets = parse_targets(options.targets)
    check_int(options.n, "--n", 1, MAX_IMAGES)
    check_batch(options.batch)
    check_overrides(options.overrides)
    return targets


# `mfdeploy eval`: accuracy on labelled data (mfdeploy.parity.evaluate)
EVAL_TARGETS = ("onnx", "onnx-fp16", "onnx-int8")
EVAL_BATCH = ACCURACY_BATCH
EVAL_DATA = BUILTIN_DIGITS  # without a training record; its validation split: the images `mfdeploy train` held out


# `mfdeploy predict`: one's own images through the artifact's targets (mfdeploy.parity.predict)
PREDICT_ALWAYS = ("torch", "onnx")  # default targets even when the artifact lacks their file (reported skipped)


@dataclass
class PredictOptions:
    targets: list[str] | None = None  # None: PREDICT_ALWAYS plus every other target whose file the artifact has
    top: int = 5  # labels shown per image and target (at most the model's classes)
    provider: str | None = None  # ONNX Runtime execution provider; None: the runner's default (cpu)
    threads: int | None = None  # ONNX Runtime intra-op (and torch) threads; None: theirs
    batch: int = 16  # images per inference call (not a flag: predict runs a handful of images)
