"""Core ML: ``MLModel.predict`` on macOS, the numpy MIL evaluator everywhere else.

Core ML prediction exists only on macOS. Elsewhere this runner evaluates the package's ML program with
:mod:`mfdeploy.runtime.mil_evaluator` and its label says so: those figures are the program's numerics,
not what a device measures (and never a latency).

The runner reads what it needs from the package itself (input name and kind, enumerated batch sizes,
precision, the preprocessing in mfdeploy's metadata), so it also runs a package outside an artifact.
It takes the common runner input, normalised float32 NCHW batches; for a package with an image input
it turns them back into 0-255 pixels, which is what the image input expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdeploy.errors import UserError
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.runtime.base import LayerRecord, Runner, TensorSpec
from mfdeploy.runtime.coreml_env import (
    INSTALL_HINT,
    compute_plan_unavailable_reason,
    coremltools_installed,
    import_coremltools,
    predict_unavailable_reason,
)

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
ENGINES = ("auto", "predict", "evaluator")
EVALUATOR_NOTE = "numpy MIL evaluator: numerics, not device latency"


@dataclass(frozen=True)
class PackageInfo:
    """What a runner needs to know about an .mlpackage, read from its own description."""

    input_name: str
    image_input: bool
    batches: tuple[int, ...]
    in_chans: int
    imgsz: int
    num_classes: int | None
    classifier: bool
    precision: str
    compression: str
    preprocessing: Preprocessing | None

    @classmethod
    def read(cls, package: str | os.PathLike[str]) -> "PackageInfo":
        ct = import_coremltools()
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
        description = spec.description
        first = description.input[0]
        metadata = dict(description.metadata.userDefined)
        kind = first.type.WhichOneof("Type")
        if kind == "imageType":
            batches, in_chans, imgsz = (1,), 3, int(first.type.imageType.height)
        elif kind == "multiArrayType":
            array = first.type.multiArrayType
            shapes = [list(s.shape) for s in array.enumeratedShapes.shapes] or [list(array.shape)]
            batches = tuple(sorted({int(s[0]) for s in shapes}))
            in_chans, imgsz = int(shapes[0][1]), int(shapes[0][2])
        else:
            raise UserError(f"{package}: input {first.name!r} is a {kind}, not an image or a tensor")
        preprocessing = None
        if "mfdeploy.preprocessing" in metadata:
            preprocessing = Preprocessing.from_dict(json.loads(metadata["mfdeploy.preprocessing"]))
        num_classes = metadata.get("mfdeploy.num_classes")
        return cls(
            input_name=first.name,
            image_input=kind == "imageType",
            batches=batches,
            in_chans=in_chans,
            imgsz=imgsz,
            num_classes=int(num_classes) if num_classes else None,
            classifier=bool(description.predictedFeatureName),
            precision=metadata.get("mfdeploy.precision", "fp16"),
            compression=metadata.get("mfdeploy.compression", "none"),
            preprocessing=preprocessing,
        )


def chunk_sizes(count: int, batches: tuple[int, ...]) -> list[tuple[int, int]]:
    """Split ``count`` images into runs the model accepts: (run size, images in it) pairs, the last run
    padded up to the smallest accepted batch when fewer images are left."""
    allowed = sorted(batches)
    runs = []
    left = count
    while left > 0:
        fitting = [b for b in allowed if b <= left]
        size = fitting[-1] if fitting else allowed[0]
        runs.append((size, min(size, left)))
        left -= min(size, left)
    return runs


_DEVICE_NAMES = {
    "MLCPUComputeDevice": "CPU",
    "MLGPUComputeDevice": "GPU",
    "MLNeuralEngineComputeDevice": "NeuralEngine",
}

# Every coremltools name the macOS-only code below uses (it cannot run off macOS), with the keyword
# arguments it passes: (dotted name, keywords). tests/test_coreml.py checks each one against the
# installed coremltools (attribute, dataclass field or keyword parameter), and that this list covers
# every attribute and keyword _load_mlmodel, _predict and _compute_plan_records use.
_PLAN = "coremltools.models.compute_plan"
COREMLTOOLS_API: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coremltools.models.MLModel", ("compute_units",)),
    *((f"coremltools.ComputeUnit.{unit}", ()) for unit in COMPUTE_UNITS),
    ("coremltools.models.MLModel.predict", ()),
    ("coremltools.models.MLModel.get_compiled_model_path", ()),
    (f"{_PLAN}.MLComputePlan.load_from_path", ("compute_units",)),
    (f"{_PLAN}.MLComputePlan.model_structure", ()),
    (f"{_PLAN}.MLComputePlan.get_compute_device_usage_for_mlprogram_operation", ()),
    (f"{_PLAN}.MLComputePlan.get_estimated_cost_for_mlprogram_operation", ()),
    (f"{_PLAN}.MLModelStructure.program", ()),
    (f"{_PLAN}.MLModelStructureProgram.functions", ()),
    (f"{_PLAN}.MLModelStructureProgramFunction.block", ()),
    (f"{_PLAN}.MLModelStructureProgramBlock.operations", ()),
    (f"{_PLAN}.MLModelStructureProgramOperation.operator_name", ()),
    (f"{_PLAN}.MLModelStructureProgramOperation.outputs", ()),
    (f"{_PLAN}.MLModelStructureProgramNamedValueType.name", ()),
    (f"{_PLAN}.MLComputePlanDeviceUsage.preferred_compute_device", ()),
    (f"{_PLAN}.MLComputePlanCost.weight", ()),
    *((f"coremltools.models.compute_device.{device}", ()) for device in _DEVICE_NAMES),
)


# The macOS-only calls, kept thin: each takes what it needs, so the API check above can read them.
def _load_mlmodel(ct: Any, package: str, compute_units: str) -> Any:
    return ct.models.MLModel(package, compute_units=ct.ComputeUnit[compute_units])


def _predict(model: Any, feed: dict[str, Any]) -> dict[str, Any]:
    return model.predict(feed)


def _compute_plan_records(ct: Any, model: Any, compute_units: str) -> list[LayerRecord]:
    """Per op of a loaded MLModel: the device Core ML plans it on and its estimated share of the cost."""
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(model.get_compiled_model_path(), compute_units=ct.ComputeUnit[compute_units])
    records = []
    for function in plan.model_structure.program.functions.values():
        for op in function.block.operations:
            if op.operator_name == "const" or op.operator_name.startswith("constexpr_"):
                continue
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            cost = plan.get_estimated_cost_for_mlprogram_operation(op)
            device = type(usage.preferred_compute_device).__name__ if usage is not None else None
            records.append(
                LayerRecord(
                    name=op.outputs[0].name if op.outputs else op.operator_name,
                    op=op.operator_name,
                    device=_DEVICE_NAMES.get(device, device),
                    estimated_cost=None if cost is None else float(cost.weight),
                )
            )
    return records


class CoreMLRunner(Runner):
    """One .mlpackage. ``engine``: ``predict`` (macOS), ``evaluator`` (anywhere), ``auto`` (predict where
    it can run, else the evaluator). ``evaluator_precision`` defaults to the package's precision."""

    backend = "coreml"

    def __init__(
        self,
        package: str | os.PathLike[str],
        compute_units: str = "ALL",
        engine: str = "auto",
        evaluator_precision: str | None = None,
        profile: bool = False,
        program: Any = None,
    ) -> None:
        """``program``: the package's MIL program when the caller has read it already (the export, right
        after writing the package): the evaluator then does not read it again (0.4 s for a 52m)."""
        super().__init__()
        if compute_units not in COMPUTE_UNITS:
            raise UserError(
                f"unknown Core ML compute units {compute_units!r}; choose one of {', '.join(COMPUTE_UNITS)}"
            )
        if engine not in ENGINES:
            raise UserError(f"unknown Core ML engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if not coremltools_installed():
            raise UserError(f"running a Core ML package needs coremltools; {INSTALL_HINT}")
        self.package = Path(package)
        if not self.package.exists():
            raise UserError(f"{self.package} does not exist; make it with `mfdeploy export --target coreml`")
        self.info = PackageInfo.read(self.package)
        if engine == "auto":
            engine = "predict" if predict_unavailable_reason() is None else "evaluator"
        elif engine == "predict" and (reason := predict_unavailable_reason()) is not None:
            raise UserError(reason)
        self.engine = engine
        self.compute_units = compute_units
        self.profile = profile
        if engine == "evaluator":
            self.benchmark_caveat = (
                "numpy MIL evaluator (no Core ML runtime off macOS): a numerics check, not the latency of a phone"
            )
        self.precision = self.info.precision
        self.evaluator_precision = evaluator_precision or self.info.precision
        if self.info.image_input and self.info.preprocessing is None:
            raise UserError(f"{self.package} has an image input but no mfdeploy preprocessing metadata")
        self._model: Any = None
        self._program = program

    @classmethod
    def host_unavailable_reason(cls) -> str | None:
        if not coremltools_installed():
            return f"Core ML needs coremltools, which is not installed; {INSTALL_HINT}"
        return None

    @classmethod
    def from_artifact(
        cls, artifact, spec, compute_units: str = "ALL", engine: str = "auto", profile: bool = False, **_: object
    ) -> "CoreMLRunner":
        """The artifact's model.mlpackage (the registry has checked host_unavailable_reason first)."""
        path = artifact.require(spec.file, f"make it with `{spec.make_command(artifact)}`")
        return cls(path, compute_units=compute_units, engine=engine, profile=profile)

    @property
    def label(self) -> str:
        weights = "" if self.info.compression == "none" else f", {self.info.compression} weights"
        if self.engine == "predict":
            return f"coreml {self.precision}{weights} (MLModel.predict, {self.compute_units})"
        return f"coreml {self.evaluator_precision}{weights} ({EVALUATOR_NOTE})"

    def _load(self) -> None:
        if self.engine == "predict":
            self._model = _load_mlmodel(import_coremltools(), str(self.package), self.compute_units)
        else:
            from mfdeploy.runtime.mil_evaluator import MILEvaluator

            if self._program is not None:
                self._model = MILEvaluator(self._program, self.evaluator_precision)
            else:
                self._model = MILEvaluator.from_package(self.package, self.evaluator_precision)

    def _close(self) -> None:
        self._model = None

    def profile_layers(self) -> list[LayerRecord] | None:
        """Core ML's compute plan (macOS 14.4+): per op, the device it is planned on and its estimated
        share of the cost. Core ML has no per-op timer, so these are estimates, not measured times.
        On an older macOS this raises UserError saying so (bench reports it as the cell's profile)."""
        if not self.profile or self.engine != "predict":
            return None
        if (reason := compute_plan_unavailable_reason()) is not None:
            raise UserError(reason)
        self.load()
        return _compute_plan_records(import_coremltools(), self._model, self.compute_units)

    def inputs(self) -> list[TensorSpec]:
        batch: int | str = self.info.batches[0] if len(self.info.batches) == 1 else "batch"
        return [TensorSpec(self.info.input_name, (batch, self.info.in_chans, self.info.imgsz, self.info.imgsz))]

    def outputs(self) -> list[TensorSpec]:
        classes = self.info.num_classes or "classes"
        specs = [TensorSpec("logits", ("batch", classes))]
        if self.info.classifier:
            specs.append(TensorSpec("probabilities", ("batch", classes)))
        return specs

    def to_pixels(self, images: np.ndarray) -> np.ndarray:
        """Normalised NCHW float32 -> the 0-255 RGB values an image input takes (not rounded)."""
        p = self.info.preprocessing
        mean = np.asarray(p.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(p.std, np.float32).reshape(1, -1, 1, 1)
        return (images * std + mean) * np.float32(255.0)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.load()
        images = np.ascontiguousarray(images, dtype=np.float32)
        results: dict[str, list[np.ndarray]] = {}
        start = 0
        for size, used in chunk_sizes(len(images), self.info.batches):
            chunk = images[start : start + used]
            start += used
            if used < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - used, axis=0)])
            for name, value in self._run_chunk(chunk).items():
                results.setdefault(name, []).append(value[:used])
        return {name: np.concatenate(values) for name, values in results.items()}

    def _run_chunk(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        value = self.to_pixels(chunk) if self.info.image_input else chunk
        if self.engine == "predict":
            if self.info.image_input:
                from PIL import Image

                pixels = np.clip(np.rint(value[0]), 0, 255).astype(np.uint8).transpose(1, 2, 0)
                feed: Any = Image.fromarray(pixels)  # uint8 [H, W, 3] is an RGB image
            else:
                feed = value
            outputs = _predict(self._model, {self.info.input_name: feed})
        else:
            outputs = self._model.run({self.info.input_name: value})
        result = {"logits": np.asarray(outputs["logits"], np.float32).reshape(len(chunk), -1)}
        probabilities = outputs.get("classLabel_probs")
        if isinstance(probabilities, dict):
            result["probabilities"] = np.asarray(list(probabilities.values()), np.float32).reshape(1, -1)
        return result
