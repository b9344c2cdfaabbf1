"""What `mfdeploy calibrate` (and `export --target trt`) can be asked, and the checks made before any work.

Apart from the pipeline so that the command line reads these defaults without importing ONNX or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfdeploy.artifacts import CALIBRATED_PRECISIONS, CALIBRATION_METHODS
from mfdeploy.errors import UserError
from mfdeploy.images.sets import BUILTIN, BUILTIN_SETS, DATA_CHOICES
from mfdeploy.option_values import MAX_BATCH, MAX_IMAGES, check_int, check_threads

ALL_METHODS = "all"  # --method all: every method in CALIBRATION_METHODS from the one statistics run, compared
METHOD_CHOICES = (*CALIBRATION_METHODS, ALL_METHODS)
# What --method all picks model.int8.onnx by: agreement with FP32 on the held-out images, higher is better.
SELECT_METRICS = ("cosine", "top1", "top5")
DEFAULT_SELECT = "cosine"  # the only one of the three that is meaningful on an untrained model too
CALIBRATION_DATA = BUILTIN  # without a training record: built-in photographs
# What the INT8 graph runs outside its Q/DQ pairs: FP16 (with the FP32 islands) by default, as NVIDIA's
# ONNX quantizer builds it; fp32 keeps the FP32 graph around the pairs.
INT8_BASES = ("fp16", "fp32")
DEFAULT_INT8_BASE = "fp16"


@dataclass
class CalibrationOptions:
    # None: the data the model was trained on (its manifest's model.trained_on), else CALIBRATION_DATA
    data: str | None = None
    num_images: int = 512
    batch: int = 32
    method: str = "minmax"
    percentile: float = 99.99
    precisions: tuple[str, ...] = CALIBRATED_PRECISIONS
    keep_norms_fp32: bool = True
    int8_base: str = DEFAULT_INT8_BASE
    threads: int | None = None
    holdout: int = 64
    measure_latency: bool = True
    select: str | None = None  # with method "all": the metric that installs one graph (None: DEFAULT_SELECT)

    @property
    def methods(self) -> tuple[str, ...]:
        """The INT8 methods this run calibrates: every one for ``all``, else the one asked for."""
        return CALIBRATION_METHODS if self.method == ALL_METHODS else (self.method,)

    @property
    def select_metric(self) -> str:
        return self.select or DEFAULT_SELECT


def check_options(options: CalibrationOptions) -> None:
    if options.method not in METHOD_CHOICES:
        raise UserError(f"unknown calibration method {options.method!r}; choose one of {', '.join(METHOD_CHOICES)}")
    if not 0.0 < options.percentile <= 100.0:
        raise UserError(f"--percentile must be in (0, 100], got {options.percentile}")
    if options.select is not None:
        if options.select not in SELECT_METRICS:
            raise UserError(f"unknown --select {options.select!r}; choose one of {', '.join(SELECT_METRICS)}")
        if options.method != ALL_METHODS:
            raise UserError(
                f"--select picks among the methods of --method all; drop it, or pass --method all "
                f"(--method {options.method} installs {options.method})"
            )
    if options.int8_base not in INT8_BASES:
        raise UserError(f"unknown --int8-base {options.int8_base!r}; choose one of {', '.join(INT8_BASES)}")
    check_int(options.batch, "--calib-batch", 1, MAX_BATCH)
    check_int(options.num_images, "--calib-size", 1, MAX_IMAGES)
    check_int(options.holdout, "holdout", 0, MAX_IMAGES)
    check_threads(options.threads)
    if options.data is not None and options.data not in BUILTIN_SETS and not Path(options.data).exists():
        raise UserError(f"calibration data {options.data} does not exist; {DATA_CHOICES}")
    unknown = [p for p in options.precisions if p not in CALIBRATED_PRECISIONS]
    if unknown or not options.precisions:
        raise UserError(
            f"unknown precision {', '.join(unknown) or '(none)'}; choose from {', '.join(CALIBRATED_PRECISIONS)}"
        )
    if options.method == ALL_METHODS and "int8" not in options.precisions:
        raise UserError("--method all compares the INT8 calibration methods; add int8 to --precision")
