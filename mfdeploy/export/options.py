"""What `mfdeploy export` can be asked: the targets, the stages each runs, and the options.

Apart from the pipeline so that the command line reads these defaults without importing ONNX or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_TARGETS = ("onnx", "trt", "coreml", "all")

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
    num_classes: int | None = None
    seed: int = 0
    out: Path = Path("artifacts")
    force: bool = False
    simplifier: str = "onnxslim"
    stage_options: dict[str, Any] = field(default_factory=dict)  # per stage: {"coreml": CoreMLOptions(...)}
