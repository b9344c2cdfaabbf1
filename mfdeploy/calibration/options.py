"""What `mfdeploy calibrate` (and `export --target trt`) can be asked, and the checks made before any work.

Apart from the pipeline so that the command line reads these defaults without importing ONNX or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfdeploy.artifacts import CALIBRATED_PRECISIONS
from mfdeploy.errors import UserError
from mfdeploy.images.sets import BUILTIN, BUILTIN_SETS, DATA_CHOICES
from mfdeploy.option_values import MAX_BATCH, MAX_IMAGES, check_int, check_threads

CALIBRATION_DATA = BUILTIN  # without a training record: built-in photographs


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
    threads: int | None = None
    holdout: int = 64
    measure_latency: bool = True


def check_options(options: CalibrationOptions) -> None:
    from mfdeploy.calibration.ranges import check_method

    check_method(options.method, options.percentile)
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
