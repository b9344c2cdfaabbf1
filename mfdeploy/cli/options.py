"""Every option the commands share, declared once. Defaults come from the library's options dataclasses
(:func:`default`), and whether the user gave a flag is asked of the parser (:func:`given`), never decided by
comparing a value with a retyped literal.

One meaning per flag: ``--json [PATH|-]`` (see :mod:`mfdeploy.cli.output`), ``--batch N`` one batch size,
``--batches 1,8,32`` a list, ``--size`` a model size, ``--provider`` ONNX Runtime's execution provider.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mfdeploy.calibration.options import CALIBRATION_DATA
from mfdeploy.cli.output import json_target
from mfdeploy.runtime.onnxruntime_runner import DEFAULT_PROVIDER, PROVIDERS

TENSORRT = "TensorRT (--target trt/all)"
COREML = "Core ML (--target coreml/all)"
CALIBRATION = "Calibration (INT8/FP16 graphs for TensorRT)"


def default(options_class: type, name: str) -> Any:
    """The default of field ``name`` of a library options dataclass: the one place a default is written."""
    for item in dataclasses.fields(options_class):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
    raise KeyError(f"{options_class.__name__} has no field {name!r}")


def given(ctx: typer.Context, **flags: str) -> list[str]:
    """The flags (``{parameter: "--flag"}``) the user typed, as the parser saw them (each label once)."""
    # by name: typer >= 0.20 bundles its own click, older typer uses click's ParameterSource
    typed = ("COMMANDLINE", "ENVIRONMENT")
    sources = {name: getattr(ctx.get_parameter_source(name), "name", None) for name in flags}
    return list(dict.fromkeys(flag for name, flag in flags.items() if sources[name] in typed))


JsonOption = Annotated[
    Optional[str],
    typer.Option(
        "--json",
        metavar="[PATH|-]",
        callback=json_target,
        help="Write machine-readable JSON to PATH, or to stdout with - or no value (the summary then goes to "
        'stderr). A failure writes {"error": {...}} there.',
    ),
]
SizeOption = Annotated[Optional[str], typer.Option("--size", help="Model size: 26m, 52m, 96m, 151m, 214m, 294m, 508m.")]
ProviderOption = Annotated[
    Optional[str],
    typer.Option(
        "--provider",
        help=f"ONNX Runtime execution provider for the onnx targets: {', '.join(PROVIDERS)} "
        f"(default {DEFAULT_PROVIDER}).",
    ),
]
ThreadsOption = Annotated[
    Optional[int], typer.Option("--threads", help="ONNX Runtime intra-op (and torch) threads (default: theirs).")
]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--weights",
        help="Checkpoint: .pth.tar (the official ones, timm's format), .tar, .pth, .pt, .bin, .ckpt or "
        ".safetensors; a state dict or a training checkpoint holding one (default: random weights).",
    ),
]
ArchOption = Annotated[
    Optional[str],
    typer.Option(
        "--arch",
        help="Model family without --weights: seed (the PaddleViT design, the default) or official "
        "(AAboys/MobileFormer, the ImageNet checkpoints' network). A checkpoint says its own.",
    ),
]
EmaOption = Annotated[
    bool,
    typer.Option("--ema", help="Load the checkpoint's EMA weights (timm's state_dict_ema) instead of its state_dict."),
]
OutOption = Annotated[Path, typer.Option("--out", help="Folder that holds mobileformer_<size>/ artifact folders.")]
TargetsOption = Annotated[
    str, typer.Option("--targets", help="Comma-separated targets; any that cannot run here is skipped with the reason.")
]
DefaultTargetsOption = Annotated[
    Optional[str],
    typer.Option(
        "--targets",
        help="Comma-separated targets (default: torch, onnx and every other target the artifact already has); "
        "any that cannot run here is skipped with the reason.",
    ),
]
ImgszOption = Annotated[Optional[int], typer.Option("--imgsz", help="Input side, a multiple of 32.")]
NumClassesOption = Annotated[Optional[int], typer.Option("--num-classes", help="Classifier outputs.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the random weights (and shuffling, in train).")]
VERIFICATION = "Verification (the ONNX graph against PyTorch)"
# The ONNX verification of `export` and `verify`: max abs error on logits <= atol + rtol * largest |logit|.
AtolOption = Annotated[
    float,
    typer.Option(
        "--atol", help="Allowed abs error on logits, > 0 (plus the --rtol share).", rich_help_panel=VERIFICATION
    ),
]
RtolOption = Annotated[
    float,
    typer.Option(
        "--rtol",
        help="Plus this share, in [0, 1], of the largest |logit| PyTorch gives in each case (0: --atol alone).",
        rich_help_panel=VERIFICATION,
    ),
]
ArtifactArgument = Annotated[Path, typer.Argument(help="An artifact folder written by `mfdeploy export`.")]
OptionalArtifactArgument = Annotated[Optional[Path], typer.Argument(help="An artifact folder (or use --size).")]


def batch_option(purpose: str, *aliases: str) -> Any:
    """``--batch N``: one batch size, everywhere; ``purpose`` says what it sizes in this command."""
    return Annotated[Optional[int], typer.Option("--batch", *aliases, help=f"One batch size: {purpose}.")]


def batches_option(purpose: str, panel: str | None = None) -> Any:
    """``--batches 1,8,32``: a list of batch sizes, everywhere."""
    return Annotated[
        Optional[str],
        typer.Option("--batches", help=f"Batch sizes, comma-separated: {purpose}.", rich_help_panel=panel),
    ]


def data_option(what: str, optional: bool = False) -> Any:
    """``--data``; ``optional``: its default is None, "not given", resolved by the library (which says what
    it chose, in ``what`` and in its report)."""
    return Annotated[Optional[str] if optional else str, typer.Option("--data", help=what)]


# -- calibration (export --target trt, calibrate) ------------------------------------------------------
# None: not given; the library then takes the data the model was trained on, else CALIBRATION_DATA
CalibDataOption = Annotated[
    Optional[str],
    typer.Option(
        "--calib-data",
        help="builtin (photographs), builtin-digits (its training split), a folder of images, or a preprocessed "
        ".npy/.npz (default: the data the model was trained on, as its checkpoint recorded it, else "
        f"{CALIBRATION_DATA}).",
        rich_help_panel=CALIBRATION,
    ),
]
CalibSizeOption = Annotated[int, typer.Option("--calib-size", help="Calibration images.", rich_help_panel=CALIBRATION)]
CalibBatchOption = Annotated[
    int, typer.Option("--calib-batch", help="Batch size of the calibration run.", rich_help_panel=CALIBRATION)
]
MethodOption = Annotated[
    str,
    typer.Option(
        "--method",
        help="minmax, entropy, percentile, or all: the three from one statistics run, compared, the best by "
        "--select installed as model.int8.onnx. Each method's graph and report: calibration/<method>/.",
        rich_help_panel=CALIBRATION,
    ),
]
SelectOption = Annotated[
    Optional[str],
    typer.Option(
        "--select",
        help="With --method all: cosine, top1 or top5, the agreement with FP32 that picks model.int8.onnx "
        "(default cosine).",
        rich_help_panel=CALIBRATION,
    ),
]
PercentileOption = Annotated[
    float, typer.Option("--percentile", help="For --method percentile, in (0, 100].", rich_help_panel=CALIBRATION)
]
Int8BaseOption = Annotated[
    str,
    typer.Option(
        "--int8-base",
        help="What the INT8 graph runs outside its Q/DQ pairs: fp16 (with FP32 islands, the default) or fp32.",
        rich_help_panel=CALIBRATION,
    ),
]
Fp16NormOption = Annotated[
    bool,
    typer.Option(
        "--fp16-norm", help="Allow LayerNorm/Softmax in FP16 (kept FP32 by default).", rich_help_panel=CALIBRATION
    ),
]

# -- TensorRT engine (export --target trt, build-engine) ---------------------------------------------
MinBatchOption = Annotated[
    Optional[int], typer.Option("--min-batch", help="Profile: smallest batch.", rich_help_panel=TENSORRT)
]
OptBatchOption = Annotated[
    Optional[int], typer.Option("--opt-batch", help="Profile: batch to tune for.", rich_help_panel=TENSORRT)
]
MaxBatchOption = Annotated[
    Optional[int], typer.Option("--max-batch", help="Profile: largest batch.", rich_help_panel=TENSORRT)
]
WorkspaceOption = Annotated[
    float, typer.Option("--workspace", help="Workspace pool limit, GiB.", rich_help_panel=TENSORRT)
]
TimingCacheOption = Annotated[
    Optional[Path],
    typer.Option("--timing-cache", help="Timing cache file, reused across builds.", rich_help_panel=TENSORRT),
]
