"""`mfdeploy export --target coreml`: a verified Core ML ML program next to the ONNX graph.

The stage converts the same PyTorch model the ONNX graph came from (see :mod:`coreml_convert`), writes
``model.mlpackage`` into the staged artifact folder, checks every op against the deployment target,
and verifies the saved package against PyTorch on real photographs by evaluating its MIL program with
numpy, in FP32 and in FP16 (:mod:`mfdeploy.runtime.mil_evaluator`; on macOS also with the real
``MLModel.predict``). If anything fails the whole staged folder is discarded, so there is never a
partial package.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfdeploy.artifacts import COREML_PACKAGE, artifact_dir_name
from mfdeploy.errors import UserError
from mfdeploy.export.coreml_convert import ConversionSpec, convert, decompressed, describe
from mfdeploy.export.coreml_manifest import input_section, summary_lines
from mfdeploy.export.coreml_options import (  # noqa: F401 (re-exported: the stage's options live there)
    COMPRESSIONS,
    COREML_PRECISIONS,
    MAX_BATCH_SHAPES,
    VERIFY_IMAGES,
    CoreMLOptions,
    parse_batches,
    parse_compress,
    parse_deployment_target,
    parse_precision,
    read_labels,
)
from mfdeploy.export.coreml_passes import PASSES
from mfdeploy.export.coreml_program import OFFICIAL_52M_COMPUTE_OPS, inspect_program
from mfdeploy.export.verify import VERIFY_RTOL, VerificationError, verification_inputs
from mfdeploy.fileio import atomic_path
from mfdeploy.metrics import logit_scale, tolerance
from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.coreml_env import INSTALL_HINT, coremltools_installed, predict_unavailable_reason
from mfdeploy.runtime.coreml_runner import CoreMLRunner
from mfdeploy.thresholds import thresholds_for

# FP32 ML program against PyTorch: max abs error on logits <= FP32_ATOL + FP32_RTOL * the largest |logit|
# PyTorch gives, the ONNX verification's rule. The absolute part is ten times ONNX's (the numpy evaluator
# sums in other orders than ONNX Runtime); the relative part is ONNX's: a 26m with logits up to 1172
# measured 8.9e-4, 7.5e-7 of its scale, where an absolute limit alone would refuse larger logits.
FP32_ATOL = 1e-3
FP32_RTOL = VERIFY_RTOL
# Top-1 agreement with PyTorch that the deployed numerics must reach, per weight compression. 6- and
# 4-bit palettization are lossy by choice (52m, random weights: cosine 0.92 for 4 bits, top-1 agreement
# 82-88%): their figures are reported and a warning is printed below LOSSY_WARN_TOP1, but only
# non-finite outputs fail them.
MIN_TOP1: dict[str, float | None] = {
    "none": 0.99,
    "int8": 0.98,
    "palettize8": 0.98,
    "palettize6": None,
    "palettize4": None,
}
LOSSY_WARN_TOP1 = 0.98


def stage_options(export_options) -> CoreMLOptions:
    options = export_options.stage_options.get("coreml") or CoreMLOptions()
    if not isinstance(options, CoreMLOptions):
        raise TypeError(f"stage_options['coreml'] must be a CoreMLOptions, got {type(options).__name__}")
    return options


def check_stage(export_options, loaded) -> None:
    """Everything that can be refused before any export work: called by the pipeline after the model
    is loaded, and again by :func:`run_stage`."""
    options = stage_options(export_options)
    options.validate()
    if not coremltools_installed():
        raise UserError(f"--target coreml needs coremltools, which is not installed; {INSTALL_HINT}")
    if options.image_input and loaded.in_chans != 3:
        raise UserError(
            f"--image-input needs a model with 3 input channels (an RGB image); this {loaded.size} takes "
            f"{loaded.in_chans}; leave out --image-input to get a tensor input"
        )
    if options.labels is not None and len(options.labels) != loaded.num_classes:
        source = options.labels_file or "the labels"
        raise UserError(
            f"labels file {source} has {len(options.labels)} lines but the model has {loaded.num_classes} "
            "classes; write one class name per line"
        )


def _labels(options: CoreMLOptions, loaded) -> tuple[tuple[str, ...] | None, str | None, str | None]:
    """(labels, where they came from, a note for the user)."""
    if options.labels is not None:
        return options.labels, "file", None
    classes = loaded.metadata.get("classes")
    if isinstance(classes, list) and len(classes) == loaded.num_classes and all(isinstance(c, str) for c in classes):
        if options.batches != (1,):
            return (
                None,
                None,
                (
                    "Core ML: the checkpoint names its classes, but a classifier takes one image per prediction, "
                    "so with --batches the package outputs logits only"
                ),
            )
        return (
            tuple(classes),
            "checkpoint",
            (
                f"Core ML: class labels from the checkpoint ({len(classes)} classes) make the package a classifier; "
                "pass --labels FILE to use other names"
            ),
        )
    return None, None, None


@dataclass
class CoreMLVerification:
    """Evaluations of the saved package against PyTorch on the same real photographs."""

    images: int
    deployed: str  # which evaluation the gate applies to: "fp16", "fp32" or "predict"
    gate: str
    passed: bool
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    scale: float = 0.0  # the largest |logit| PyTorch gives on these photographs
    limit: float | None = None  # the max abs error allowed, when the gate is one (fp32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": "images",
            "images": self.images,
            "deployed": self.deployed,
            "gate": self.gate,
            "passed": self.passed,
            "evaluations": self.evaluations,
            "scale": self.scale,
            "limit": self.limit,
        }


def verify_package(
    package: Path, loaded, preprocessing, options: CoreMLOptions, program: Any = None
) -> CoreMLVerification:
    """PyTorch against the package's ML program on real photographs: evaluated with numpy in FP32 and
    FP16 (and with MLModel.predict on macOS); the deployed numerics must pass the gate. ``program``: the
    package's MIL program, read back once by the caller and shared by both evaluators."""
    from mfdeploy.runtime.torch_runner import TorchRunner

    images = verification_inputs(preprocessing, options.verify_images, loaded.in_chans)["images"]
    step = max(options.batches)
    with TorchRunner(loaded.model, preprocessing.imgsz) as reference:
        expected = reference.infer_all(images, 32)
    engines = [("fp32", "evaluator", "fp32"), ("fp16", "evaluator", "fp16")]
    if predict_unavailable_reason() is None:
        engines.append(("predict", "predict", None))
    runners = (
        CoreMLRunner(package, engine=engine, evaluator_precision=precision, program=program)
        for _, engine, precision in engines
    )
    evaluations: dict[str, dict[str, Any]] = {
        name: {"runner": run.runner.label, **run.figures}
        for (name, _, _), run in zip(engines, run_targets(expected, runners, images, step), strict=True)
    }
    deployed = "predict" if "predict" in evaluations else options.precision
    result = evaluations[deployed]
    finite = result["nan_count"] == 0 and result["inf_count"] == 0
    scale, limit = logit_scale(expected), None
    if options.precision == "fp32" and options.compress == "none" and deployed == "fp32":
        limit = tolerance(FP32_ATOL, FP32_RTOL, scale)
        gate = f"fp32 max abs error <= {limit:.3g} = {FP32_ATOL:g} + {FP32_RTOL:g} x largest |logit| {scale:.4g}"
        passed = finite and result["max_abs_error"] <= limit
    elif MIN_TOP1[options.compress] is None:
        gate = f"{deployed} outputs finite ({options.compress} is lossy by choice: agreement reported, not gated)"
        passed = finite
    elif loaded.is_random:
        # an untrained model's logits are nearly flat: a perturbation cosine does not notice swaps its top
        # classes (a random 26m at 64 px: fp16 top-1 agreement 94% at cosine 0.99999), so, as parity does
        # for such a model, cosine is the gate and top-1 agreement is reported
        minimum = thresholds_for("fp16" if options.compress == "none" else "int8").min_cosine
        gate = f"{deployed} cosine >= {minimum:g} (untrained model: top-1 agreement reported, not gated)"
        passed = finite and result["cosine"] >= minimum
    else:
        minimum = MIN_TOP1[options.compress]
        gate = f"{deployed} top-1 agreement >= {minimum:.0%}"
        passed = finite and result["top1_agreement"] >= minimum
    return CoreMLVerification(len(images), deployed, gate, passed, evaluations, scale, limit)


def run_stage(ctx) -> None:
    """Convert, compress, save, check the ops and verify; record the ``coreml`` manifest section."""
    from mfdeploy.export.coreml_convert import package_bytes
    from mfdeploy.runtime.mil_evaluator import MILEvaluator, load_program

    options = stage_options(ctx.options)
    check_stage(ctx.options, ctx.loaded)
    loaded, preprocessing = ctx.loaded, ctx.preprocessing
    labels, label_source, label_note = _labels(options, loaded)
    spec = ConversionSpec(
        options, imgsz=preprocessing.imgsz, in_chans=loaded.in_chans, preprocessing=preprocessing, labels=labels
    )
    bar = ctx.progress
    steps = 6 if options.compress == "none" else 7
    task = bar.add_task(f"  coreml {loaded.size}", total=steps, status="trace and convert (coremltools)")
    complexity = {"params": ctx.manifest["model"]["params"], "madds": ctx.manifest["model"]["madds"]}
    source = loaded.source()
    work = ctx.root / ".coreml-work"
    timings: dict[str, float] = {}
    converter_warnings: list[str] = []  # coremltools' log warnings, kept off the terminal by convert
    try:
        mlmodel, timings["convert_s"] = convert(loaded.model, spec, log=converter_warnings)
        describe(mlmodel, spec, loaded.size, loaded.num_classes, complexity, source)
        bar.update(task, advance=1)
        bytes_before = None
        if options.compress != "none":
            # what the weights were before: the package with them decompressed, or, for a classifier
            # (which coremltools cannot decompress), a second conversion without compression
            bar.update(task, status="measure the package without compression")
            started = time.perf_counter()
            uncompressed = decompressed(mlmodel, log=converter_warnings)
            if uncompressed is None:
                uncompressed, _ = convert(loaded.model, spec.uncompressed(), log=converter_warnings)
            uncompressed.save(str(work / "uncompressed.mlpackage"))
            bytes_before = package_bytes(work / "uncompressed.mlpackage")
            timings["measure_uncompressed_s"] = round(time.perf_counter() - started, 3)
            bar.update(task, advance=1)
        bar.update(task, status=f"save {COREML_PACKAGE}")
        started = time.perf_counter()
        with atomic_path(ctx.root / COREML_PACKAGE) as tmp:
            mlmodel.save(str(tmp))
        timings["save_s"] = round(time.perf_counter() - started, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    package = ctx.root / COREML_PACKAGE
    bytes_after = package_bytes(package)
    bar.update(task, advance=1, status="check every op against the deployment target")

    program = load_program(package)
    report = inspect_program(program, options.deployment_target)
    if report.unsupported:
        raise UserError(
            f"the Core ML program uses ops that {options.deployment_target} does not have: "
            f"{', '.join(report.unsupported)}; choose a newer --deployment-target"
        )
    missing = MILEvaluator(program, "fp32").unsupported_ops()
    if missing:
        raise VerificationError(
            f"cannot verify the Core ML program: the MIL evaluator has no implementation of {', '.join(missing)}"
        )
    bar.update(task, advance=1, status=f"verify on {options.verify_images} photographs (numpy MIL evaluator)")
    started = time.perf_counter()
    verification = verify_package(package, loaded, preprocessing, options, program)
    del program
    timings["verify_s"] = round(time.perf_counter() - started, 3)
    bar.update(task, advance=2, status="manifest")
    if not verification.passed:
        worst = verification.evaluations[verification.deployed]
        raise VerificationError(
            f"Core ML verification failed ({verification.gate}): max abs error {worst['max_abs_error']:.3g}, "
            f"top-1 agreement {worst['top1_agreement']:.1%} on {verification.images} photographs, "
            f"NaN {worst['nan_count']}, Inf {worst['inf_count']}"
        )

    section: dict[str, Any] = {
        "file": COREML_PACKAGE,
        "format": "mlprogram",
        "converter": "coremltools (torch.jit.trace)",
        "precision": options.precision,
        "deployment_target": options.deployment_target,
        "specification_version": mlmodel.get_spec().specificationVersion,
        "batches": list(options.batches),
        "input": input_section(spec),
        "outputs": ["classLabel", "classLabel_probs", "logits"] if labels else ["logits"],
        "labels": {
            "classifier": labels is not None,
            "source": label_source,
            "count": len(labels) if labels else 0,
            "file": options.labels_file,
        },
        "compression": {
            "mode": options.compress,
            "bytes_before": bytes_before if bytes_before is not None else bytes_after,
            "bytes_after": bytes_after,
            "ratio": round((bytes_before or bytes_after) / bytes_after, 3),
        },
        "graph_passes": list(PASSES),
        **report.to_dict(),
        "official_52m_compute_ops": OFFICIAL_52M_COMPUTE_OPS,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "verification": verification.to_dict(),
        "converter_warnings": converter_warnings,
    }
    ctx.manifest["coreml"] = section
    ctx.manifest.setdefault("verification", {})["coreml"] = verification.to_dict()
    ctx.artifact.record_file(COREML_PACKAGE)
    bar.update(task, advance=1, status="done")
    if label_note:
        ctx.notes.append(label_note)
    deployed = verification.evaluations[verification.deployed]
    if MIN_TOP1[options.compress] is None and deployed["top1_agreement"] < LOSSY_WARN_TOP1:
        ctx.notes.append(
            f"warning: with {options.compress} weights the package agrees with PyTorch on "
            f"{deployed['top1_agreement']:.0%} of top-1 classes (cosine {deployed['cosine']:.3f}); "
            "check it on your own data, or use --compress palettize8 or int8"
        )
    ctx.notes.extend(summary_lines(ctx.manifest, Path(ctx.options.out) / artifact_dir_name(loaded.size)))
