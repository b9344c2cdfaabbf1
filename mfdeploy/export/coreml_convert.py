"""PyTorch Mobile-Former -> Core ML ML program, with coremltools (torch.jit.trace, the stable path).

What is decided here: the input (a float tensor like the ONNX graph, or an RGB ImageType with the
normalisation folded into the model), enumerated batch shapes, FP16 or FP32 compute, weight compression
inside the conversion pipeline, an optional classifier head, and the metadata Xcode shows.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfdeploy import __version__
from mfdeploy.export import coreml_passes
from mfdeploy.export.coreml_options import CoreMLOptions
from mfdeploy.export.coreml_program import target_enum
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.model.layers import native_grouped_conv, native_softmax, stacked_tokens
from mfdeploy.runtime.coreml_env import import_coremltools, quiet_coremltools
from mfdeploy.swapping import swapped

TENSOR_INPUT = "images"  # the ONNX graph's input name
IMAGE_INPUT = "image"
LOGITS = "logits"
PROBABILITIES = "probabilities"
CLASS_LABEL = "classLabel"
# Core ML's image-classifier preview in Xcode (drag an image onto the model page).
_PREVIEW_TYPE_KEY = "com.apple.coreml.model.preview.type"


@dataclass(frozen=True)
class ConversionSpec:
    """Everything the conversion needs besides the model: the user's Core ML options, and what the model
    adds to them (its input size and channels, its preprocessing, and the class labels that make it a
    classifier: from ``options.labels`` or the checkpoint's class names, see ``coreml_export``)."""

    options: CoreMLOptions
    imgsz: int
    in_chans: int
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None = None

    @property
    def input_name(self) -> str:
        return IMAGE_INPUT if self.options.image_input else TENSOR_INPUT

    def uncompressed(self) -> ConversionSpec:
        """The same conversion without weight compression (what ``--compress`` is measured against)."""
        return replace(self, options=replace(self.options, compress="none"))


class _LogitsAndProbabilities(nn.Module):
    """A classifier exposes class probabilities (for Core ML's class-label output) and keeps its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model  # coreml_passes.CLASSIFIER_WRAPPER names this attribute for its value names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.softmax(dim=-1)


def fold_std_into_stem(model: nn.Module, std: Sequence[float]) -> nn.Module:
    """A copy of ``model`` that takes ``(x - mean)`` instead of ``(x - mean) / std``.

    Core ML's ImageType applies one scale to all channels plus a per-channel bias, so it can deliver
    ``pixel / 255 - mean`` but not the division by a per-channel std. The stem convolution is linear
    and pads with zeros, so dividing its weights by std per input channel is the same model.
    """
    folded = copy.deepcopy(model).eval()
    conv = folded.stem.conv_bn.conv
    with torch.no_grad():
        conv.weight.div_(torch.tensor(std, dtype=conv.weight.dtype).view(1, -1, 1, 1))
    return folded


def image_scale_and_bias(preprocessing: Preprocessing) -> tuple[float, list[float]]:
    """ImageType parameters: pixel * scale + bias = pixel / 255 - mean."""
    return 1.0 / 255.0, [-float(m) for m in preprocessing.mean]


def _input_type(ct, spec: ConversionSpec):
    shapes = [(batch, spec.in_chans, spec.imgsz, spec.imgsz) for batch in spec.options.batches]
    if spec.options.image_input:
        scale, bias = image_scale_and_bias(spec.preprocessing)
        return ct.ImageType(name=IMAGE_INPUT, shape=shapes[0], scale=scale, bias=bias, color_layout=ct.colorlayout.RGB)
    shape: Any = shapes[0] if len(shapes) == 1 else ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
    return ct.TensorType(name=TENSOR_INPUT, shape=shape, dtype=np.float32)


def _compression_config(compress: str) -> tuple[str, Any] | None:
    """(compression pass, its OptimizationConfig) for a --compress mode, None for "none"."""
    from coremltools.optimize.coreml import (
        OpLinearQuantizerConfig,
        OpPalettizerConfig,
        OptimizationConfig,
    )

    if compress == "none":
        return None
    if compress == "int8":
        op_config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return "compression::linear_quantize_weights", OptimizationConfig(global_config=op_config)
    bits = int(compress.removeprefix("palettize"))
    op_config = OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_tensor")
    return "compression::palettize_weights", OptimizationConfig(global_config=op_config)


def pass_pipeline(spec: ConversionSpec, compress: bool = True):
    """coremltools' default pipeline + mfdeploy's graph passes (+ weight compression at the end).

    Compression runs on the finished (FP16 or FP32) program, as ``coremltools.optimize.coreml`` does
    after a conversion, followed by the cleanup passes it needs (e.g. merging dequantization into
    linear ops). Doing it inside the conversion rather than on the saved model also works for
    classifiers, which coremltools 9 cannot reload for compression (its class-label list does not
    survive the round trip).
    """
    import coremltools as ct

    pipeline = coreml_passes.pipeline(classifier=spec.labels is not None)
    config = _compression_config(spec.options.compress) if compress else None
    if config is not None:
        name, optimization = config
        pipeline.append_pass(name)
        pipeline.set_options(name, {"config": optimization})
        for cleanup in ct.PassPipeline.CLEANUP.passes:
            pipeline.append_pass(cleanup)
    pipeline.append_pass(coreml_passes.NAME_AFTER_MODULES)  # last: names for the compute plan's per-stage profile
    return pipeline


def _frozen(traced: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """The trace with its weights as constants and the constant arithmetic folded.

    The weight arithmetic that ``forward`` does (attention scales, hard-sigmoid affines, concatenated
    projections, the head's BatchNorm1d) then reaches coremltools as constants: its passes walk a third of
    the nodes (official 52m: 2478 -> 855) and the conversion takes 20-30% less time, for the same program.
    ``optimize_numerics=False``: no folding that rounds differently. torch 2.13 marks ``torch.jit.freeze``
    deprecated, with all of TorchScript; where a later torch lacks it, the trace is converted as it is.
    """
    freeze = getattr(torch.jit, "freeze", None)
    if freeze is None:
        return traced
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.freeze.* is deprecated", category=DeprecationWarning)
        return freeze(traced, optimize_numerics=False)


# validated_once and propagated_where_needed swap class attributes of coremltools
_ONE_CONVERSION_AT_A_TIME = threading.RLock()


@contextmanager
def validated_once() -> Iterator[None]:
    """Inside the block, coremltools' whole-program validation is a no-op; the caller validates the
    finished program once.

    coremltools checks the whole program (every op's inputs, every var's visibility) after each of the
    ~120 graph passes of a conversion: 40% of converting Mobile-Former 52m (12.5 -> 7.1 s). The check only
    reads the program, so running it once on the result, with the essential-scope check the pipeline
    applies after dead-code elimination, refuses an invalid program all the same; what is lost is only the
    name of the pass that broke it.
    """
    from coremltools.converters.mil.mil import Program

    def not_validated(_real):
        return lambda self, check_essential_scope=False: None

    with swapped(Program, "validate", not_validated, _ONE_CONVERSION_AT_A_TIME):
        yield


def propagation_can_change(block) -> bool:
    """Whether coremltools' ``_propagate_nonreplaceable_vars`` could change anything in ``block``.

    The propagation recomputes, for every value, the set of constexpr outputs upstream of it (a pass may
    not replace a value by one that drops such a dependency). In a function's top-level block without a
    constexpr op, where every set is already empty, it recomputes empty sets: nothing can change. A nested
    block (reading values of its enclosing block) is always propagated.
    """
    if block.outer_op is not None:
        return True
    blocks = [block]
    while blocks:
        operations = blocks.pop().operations
        if any(type(op).__name__.startswith("constexpr_") for op in operations):  # op.op_type, without the call
            return True
        if any(var.nonreplaceable_vars_upstream for op in operations for var in op.outputs or ()):
            return True
        blocks.extend(inner for op in operations for inner in op.blocks)
    return False


@contextmanager
def propagated_where_needed() -> Iterator[None]:
    """Inside the block, coremltools skips its nonreplaceable-var propagation where it cannot change anything
    (:func:`propagation_can_change`).

    coremltools runs it over the whole program each time a pass leaves a ``with block:``: 128 times, 0.9 of
    the 5 s of converting an official 52m (a seed 508m: 153 times, 1.5 of 7.9 s). Checking that it can
    be skipped costs 0.37 s (0.57 s). Our programs have no constexpr op until weight compression, and from
    then on the propagation runs as before; the program is the same either way.
    """
    from coremltools.converters.mil.mil.block import Block

    def where_needed(real):
        def propagate(block) -> None:
            if propagation_can_change(block):
                real(block)

        return propagate

    with swapped(Block, "_propagate_nonreplaceable_vars", where_needed, _ONE_CONVERSION_AT_A_TIME):
        yield


def convert(model: nn.Module, spec: ConversionSpec, compress: bool = True, log: list[str] | None = None):
    """Trace ``model`` and convert it to an ML program (an unsaved ``MLModel``); returns it and the
    seconds the trace and conversion took. coremltools' progress bars stay off the terminal; its
    warnings are appended to ``log`` when one is given (dropped otherwise)."""
    ct = import_coremltools()
    model = model.eval()
    if spec.options.image_input:
        model = fold_std_into_stem(model, spec.preprocessing.std)
    outputs = [ct.TensorType(name=LOGITS, dtype=np.float32)]
    classifier = None
    if spec.labels is not None:
        model = _LogitsAndProbabilities(model).eval()
        outputs.append(ct.TensorType(name=PROBABILITIES, dtype=np.float32))
        classifier = ct.ClassifierConfig(
            list(spec.labels), predicted_feature_name=CLASS_LABEL, predicted_probabilities_output=PROBABILITIES
        )
    started = time.perf_counter()
    # Traced at batch 2: the model reads no batch size, so the trace runs at every enumerated batch.
    example = torch.zeros(2, spec.in_chans, spec.imgsz, spec.imgsz)
    # native_softmax: Core ML runs a softmax on any axis as one op; the bridges' written-out form (for ONNX
    # Runtime, see softmax_over_short_axis) would only add ops to the program. native_grouped_conv: the same
    # for a grouped conv with several outputs per input channel (see RepeatedDepthwise), one conv op here.
    # stacked_tokens: the official family's tokens as [T, B, D], where flat ones would add a reshape per block.
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        native_softmax(),
        native_grouped_conv(),
        stacked_tokens(),
        quiet_coremltools(log),
        validated_once(),
        propagated_where_needed(),
    ):
        # check_trace would run the model twice more to compare the trace with eager mode: the converted
        # program is compared with PyTorch anyway (the Core ML stage's verification), so it only costs time
        traced = torch.jit.trace(model, example, check_trace=False)
        traced = _frozen(traced)
        mlmodel = ct.convert(
            traced,
            inputs=[_input_type(ct, spec)],
            outputs=outputs,
            classifier_config=classifier,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if spec.options.precision == "fp16" else ct.precision.FLOAT32,
            minimum_deployment_target=target_enum(spec.options.deployment_target),
            pass_pipeline=pass_pipeline(spec, compress),
            skip_model_load=True,
        )
    mlmodel._mil_program.validate(check_essential_scope=True)  # once, on the result (see validated_once)
    return mlmodel, time.perf_counter() - started


def describe(
    mlmodel, spec: ConversionSpec, size: str, num_classes: int, complexity: dict[str, Any], source: Any
) -> None:
    """The metadata Xcode shows on the model page, plus mfdeploy's own keys (read back by the runner)."""
    options, p = spec.options, spec.preprocessing
    mean = ", ".join(f"{m:g}" for m in p.mean)
    std = ", ".join(f"{s:g}" for s in p.std)
    classes = f"{num_classes} classes" + (" with labels" if spec.labels else "")
    mlmodel.short_description = (
        f"Mobile-Former {size} image classifier ({classes}, {spec.imgsz}x{spec.imgsz} RGB), "
        f"{complexity['madds'] / 1e6:.1f}M MAdds, {complexity['params'] / 1e6:.2f}M parameters; "
        f"{options.precision.upper()} compute, weights {options.compress}. Exported by mfdeploy {__version__}."
    )
    mlmodel.author = "mfdeploy; Mobile-Former architecture by Chen et al. (CVPR 2022)"
    mlmodel.license = "Apache-2.0 (mfdeploy); the weights carry their own terms"
    mlmodel.version = __version__
    geometry = f"resize shorter side to {p.resize} ({p.interpolation}), center crop {p.imgsz}"
    if options.image_input:
        mlmodel.input_description[IMAGE_INPUT] = (
            f"RGB image, {spec.imgsz}x{spec.imgsz}, 8-bit values 0-255 (e.g. a camera frame; {geometry}). "
            f"Normalisation is inside the model: x / 255 - mean ({mean}), the division by std ({std}) folded "
            "into the first convolution."
        )
    else:
        batches = ", ".join(map(str, options.batches))
        mlmodel.input_description[TENSOR_INPUT] = (
            f"Float32 NCHW batch [N, {spec.in_chans}, {spec.imgsz}, {spec.imgsz}], N in {{{batches}}}: RGB images, "
            f"{geometry}, x / 255, minus mean ({mean}), divided by std ({std}). The ONNX graph's input."
        )
    mlmodel.output_description[LOGITS] = f"Class scores before softmax, [N, {num_classes}] (the ONNX graph's output)."
    if spec.labels is not None:
        mlmodel.output_description[CLASS_LABEL] = "The most likely class label."
        mlmodel.output_description[f"{CLASS_LABEL}_probs"] = "Softmax probability of every class label."
    metadata = {
        "mfdeploy.version": __version__,
        "mfdeploy.size": size,
        "mfdeploy.num_classes": str(num_classes),
        "mfdeploy.params": str(complexity["params"]),
        "mfdeploy.madds": str(complexity["madds"]),
        "mfdeploy.imgsz": str(spec.imgsz),
        "mfdeploy.preprocessing": json.dumps(p.to_dict()),
        "mfdeploy.precision": options.precision,
        "mfdeploy.compression": options.compress,
        "mfdeploy.batches": ",".join(map(str, options.batches)),
        "mfdeploy.deployment_target": options.deployment_target,
        "mfdeploy.input": "image" if options.image_input else "tensor",
        "mfdeploy.weights": json.dumps(source),
    }
    if options.image_input and spec.labels is not None:
        metadata[_PREVIEW_TYPE_KEY] = "imageClassifier"
    mlmodel.user_defined_metadata.update(metadata)


def decompressed(mlmodel, log: list[str] | None = None):
    """``mlmodel`` with its compressed weights expanded back to dense (what the export would be without
    ``--compress``), without a second conversion; None for a classifier, whose class labels do not survive
    coremltools 9's ``decompress_weights``."""
    if mlmodel.get_spec().description.predictedFeatureName:
        return None
    from coremltools.optimize.coreml import decompress_weights

    # its passes re-validated the program too: 4.1 -> 2.4-3.2 s
    with quiet_coremltools(log), validated_once(), propagated_where_needed():
        dense = decompress_weights(mlmodel)
    dense._mil_program.validate()
    return dense


def package_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the files of an .mlpackage."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
