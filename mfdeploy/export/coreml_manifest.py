"""What an artifact manifest records about its Core ML package, and what the export summary prints from it.

``run_stage`` in :mod:`mfdeploy.export.coreml_export` writes the ``coreml`` manifest section, with the
input description from :func:`input_section`; :func:`summary_lines` reads the finished section back,
so it needs only the manifest, not the export that wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfdeploy.export.coreml_convert import ConversionSpec, image_scale_and_bias
from mfdeploy.fileio import display_path
from mfdeploy.runtime.coreml_env import predict_unavailable_reason


def input_section(spec: ConversionSpec) -> dict[str, Any]:
    """The package's input as the manifest records it: a float tensor, or an RGB image with the folded normalisation."""
    options = spec.options
    batch = options.batches[0] if len(options.batches) == 1 else "batch"
    shape = [batch, spec.in_chans, spec.imgsz, spec.imgsz]
    if not options.image_input:
        return {
            "name": spec.input_name,
            "kind": "tensor",
            "dtype": "float32",
            "shape": shape,
            "enumerated_batches": list(options.batches),
        }
    scale, bias = image_scale_and_bias(spec.preprocessing)
    return {
        "name": spec.input_name,
        "kind": "image",
        "color_layout": "RGB",
        "value_range": [0, 255],
        "shape": shape,
        "scale": scale,
        "bias": bias,
        "folded_mean": list(spec.preprocessing.mean),
        "folded_std": list(spec.preprocessing.std),
        "std_folded_into": "stem convolution weights (divided per input channel)",
    }


# coremltools warnings the manifest keeps but the summary does not repeat: float64 constants (scales, folded
# weights) stored as fp32, whose effect the verification measures anyway.
ROUTINE_CONVERTER_WARNINGS = ("might lose precision",)


def shown_converter_warnings(section: dict[str, Any]) -> list[str]:
    """coremltools' log warnings during the conversion (``converter_warnings``, all in the manifest) that the
    summary prints: all but the routine ones."""
    return [
        message
        for message in section.get("converter_warnings", [])
        if not any(routine in message for routine in ROUTINE_CONVERTER_WARNINGS)
    ]


def summary_lines(manifest: dict[str, Any], folder: str | Path = "") -> list[str]:
    """What the export summary says about the Core ML package (``folder``: where the artifact ends up)."""
    c = manifest["coreml"]
    v = c["verification"]
    size = manifest["model"]["size"]
    compression = c["compression"]
    kind = "image input (RGB 0-255)" if c["input"]["kind"] == "image" else f"tensor input, batches {c['batches']}"
    labels = f", classifier with {c['labels']['count']} labels" if c["labels"]["classifier"] else ""
    where = display_path(Path(folder) / c["file"]) if folder else c["file"]
    lines = [
        f"Core ML: {where} ({c['precision']} compute, {c['deployment_target']}, {kind}{labels}), "
        f"{compression['bytes_after'] / 1e6:.2f} MB"
        + (
            f" ({compression['mode']} weights, {compression['bytes_before'] / 1e6:.2f} MB before)"
            if compression["mode"] != "none"
            else ""
        ),
        f"  ops: {c['compute_ops']} compute ops "
        f"(the official code's 52m converted as it is: {c['official_52m_compute_ops']}), "
        f"all available on {c['deployment_target']}; converted in {c['timings_s']['convert_s']:.1f} s ({size})",
    ]
    for name, figures in v["evaluations"].items():
        lines.append(
            f"  verified {name}: {figures['runner']}: max abs error {figures['max_abs_error']:.2e}, "
            f"top-1 agreement {figures['top1_agreement']:.1%} on {v['images']} photographs"
        )
    lines.append(f"  gate: {v['gate']}: passed")
    lines.extend(f"  coremltools warned: {message}" for message in shown_converter_warnings(c))
    if predict_unavailable_reason() is not None:
        lines.append(f"  ({predict_unavailable_reason()}: the evaluator checks the program's numerics, not a device)")
    return lines
