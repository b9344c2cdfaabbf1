"""Every size of both families through the toolchain: one shared job per size (background.py).

The per-size tests (export and verify, TensorRT lint of the FP32/FP16/INT8 graphs, Core ML conversion
checked by the MIL evaluator) repeat the same real pipeline for fourteen models. A job runs all of it for
one size, once per session; each test then asserts on its size's results, reading the files the job wrote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SWEEP_IMGSZ = 64  # every node of the 224 px graph (the image size changes only shapes), at a twelfth of the pixels


@dataclass
class SweptSize:
    """One size's results: the export (its artifact, afterwards calibrated), the calibration report and
    the Core ML figures."""

    export: Any  # mfdeploy.export.pipeline.ExportResult, as export() returned it
    calibration: dict[str, Any]
    coreml: dict[str, Any]

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> SweptSize:
        """Read back what :func:`sweep_size` returned."""
        from mfdeploy.export.pipeline import ExportResult

        export = ExportResult(**{**value["export"], "artifact": Path(value["export"]["artifact"])})
        return cls(export, value["calibration"], value["coreml"])


def _coreml_figures(arch: str, size: str) -> dict[str, Any]:
    """Convert the size to an ML program (FP16, iOS16) and evaluate it with the MIL evaluator in both
    precisions on two real images, against PyTorch."""
    import numpy as np
    import torch

    from mfdeploy.export.coreml_convert import ConversionSpec, convert
    from mfdeploy.export.coreml_export import CoreMLOptions
    from mfdeploy.export.coreml_program import inspect_program
    from mfdeploy.images.preprocess import Preprocessing
    from mfdeploy.images.samples import builtin_images
    from mfdeploy.metrics import compare_logits
    from mfdeploy.model.families import build_family_model
    from mfdeploy.runtime.mil_evaluator import MILEvaluator

    model = build_family_model(arch, size)
    preprocessing = Preprocessing.for_size(SWEEP_IMGSZ)
    spec = ConversionSpec(CoreMLOptions(), imgsz=SWEEP_IMGSZ, in_chans=3, preprocessing=preprocessing)
    mlmodel, _ = convert(model, spec)
    program = mlmodel._mil_program
    report = inspect_program(program, "iOS16")
    images = preprocessing.batch(builtin_images(2))
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    evaluations = {}
    for precision in ("fp16", "fp32"):
        evaluator = MILEvaluator(program, precision)
        got = np.concatenate([evaluator.run({"images": image[None]})["logits"] for image in images])
        evaluations[precision] = {"unsupported_ops": evaluator.unsupported_ops(), **compare_logits(expected, got)}
    return {"unsupported": report.unsupported, "compute_ops": report.compute_ops, "evaluations": evaluations}


def sweep_size(arch: str, size: str, out: str) -> dict[str, Any]:
    """The job for one size: export (dynamic batch, random weights), calibrate (8 images), convert.
    Returns a JSON value (a shared job's result); :meth:`SweptSize.from_json` reads it."""
    from mfdeploy.artifacts import Artifact
    from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact
    from mfdeploy.export.pipeline import ExportOptions, export

    result = export(ExportOptions(size=size, arch=arch, imgsz=SWEEP_IMGSZ, out=Path(out)))
    options = CalibrationOptions(num_images=8, batch=8, holdout=4, measure_latency=False)
    calibration = calibrate_artifact(Artifact.open(result.artifact), options)
    export_json = {**asdict(result), "artifact": str(result.artifact)}
    return {"export": export_json, "calibration": calibration, "coreml": _coreml_figures(arch, size)}
