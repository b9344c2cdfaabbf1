"""What `mfdeploy export` can be asked: the targets, the stages each runs, and the options.

Apart from the pipeline so that the command line reads these defaults without importing ONNX or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_TARGETS = ("onnx", "trt", "coreml", "all")

# The ONNX graph passes verification when, in every case, max abs error on logits <= atol + rtol * the
# largest |logit| PyTorch gives in that case (and top-1 is identical). FP32 rounding grows with the logits'
# magnitude: random weights give logits of order 1 and errors of 1e-7..5e-7, so atol keeps their check
# tight; a trained checkpoint reaches logits in the thousands on noise input, where PyTorch itself moves
# by 3e-5 of that scale between batch 32 and one image at a time, so rtol lets it pass.
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-4

# Every target starts from the verified ONNX graph and the stored weights; these stages then add
# their files to the same staged folder. Each is "module:function(ctx: ExportContext) -> None".
STAGES: dict[str, str] = {
    "trt": "mfdeploy.export.tensorrt_stage:run_stage",
    "coreml": "mfdeploy.export.coreml_export:run_stage",
}
TARGET_STAGES: dict[str, tuple[str, ...]] = {
    "onnx": (),
    "trt": ("trt",),
    "coreml": ("coreml",),
    "all": ("trt", "coreml"),
}


@dataclass
class ExportOptions:
    size: str | None = None
    target: str = "onnx"
    imgsz: int | None = None
    batch: int | None = None  # None: dynamic batch axis
    opset: int = 17
    weights: str | None = None
    ema: bool = False  # the checkpoint's EMA weights (state_dict_ema)
    arch: str | None = None  # the model family without --weights (None: seed); a checkpoint says its own
    num_classes: int | None = None
    seed: int = 0
    out: Path = Path("artifacts")
    force: bool = False
    simplifier: str = "onnxslim"
    atol: float = VERIFY_ATOL  # verification: allowed abs error on logits ...
    rtol: float = VERIFY_RTOL  # ... plus this share of the case's largest |logit|
    stage_options: dict[str, Any] = field(default_factory=dict)  # per stage: {"coreml": CoreMLOptions(...)}
    # the command-line flags the user typed (e.g. "--method"): growing an artifact remakes or refuses a part
    # made with other options only when the user asked for those options, not when a default differs
    explicit: tuple[str, ...] = ()


def check_ranges(options: ExportOptions) -> None:
    """The numeric options, by the rules every command shares: --num-classes 0 is refused, not read as
    "the default", and a seed torch cannot take is refused before the model is built."""
    from mfdeploy.images.preprocess import check_imgsz
    from mfdeploy.option_values import check_batch, check_num_classes, check_seed, check_tolerances

    if options.imgsz is not None:
        check_imgsz(options.imgsz)
    if options.batch is not None:
        check_batch(options.batch)
    if options.num_classes is not None:
        check_num_classes(options.num_classes)
    check_seed(options.seed)
    check_tolerances(options.atol, options.rtol)
