"""The `--target trt` stage of `mfdeploy export`: the precision graph TensorRT's strongly typed builder
consumes (FP32: model.onnx; FP16: model.fp16.onnx; INT8: model.int8.onnx), calibrated and linted here
on the CPU, then the engine where TensorRT and a GPU exist.

On a host without them the graphs are still written and verified; `--target trt` then exits with code 3
and one message saying what is missing, where the graphs are and the command to run on a GPU host;
`--target all` lists the engine as skipped with the same instructions and exits 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mfdeploy.artifacts import OK
from mfdeploy.calibration.options import ALL_METHODS
from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact
from mfdeploy.errors import UserError
from mfdeploy.export.tensorrt_build import (
    EXIT_NO_TENSORRT,
    GRAPH_FOR_PRECISION,
    EngineOptions,
    build_command,
    build_engine,
    gpu_host_instructions,
    trtexec_command,
)
from mfdeploy.fileio import display_path
from mfdeploy.graph.tensorrt_lint import lint_graph
from mfdeploy.option_values import MAX_WORKSPACE_GIB, check_positive
from mfdeploy.runtime.tensorrt_env import tensorrt_unavailable_reason

TRT_PRECISIONS = tuple(GRAPH_FOR_PRECISION)


@dataclass
class TensorRTOptions:
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)

    @property
    def precision(self) -> str:
        return self.engine.precision


def check_stage(export_options, loaded=None) -> None:
    """Reject bad TensorRT/calibration options before the export does any work (called by the pipeline)."""
    check_trt_options(export_options.stage_options.get("trt"))


def check_trt_options(options: TensorRTOptions | None) -> None:
    from mfdeploy.calibration.pipeline import check_options as check_calibration

    options = options or TensorRTOptions()
    if options.precision not in TRT_PRECISIONS:
        raise UserError(f"unknown TensorRT precision {options.precision!r}; choose one of {', '.join(TRT_PRECISIONS)}")
    if options.engine.profile is not None:
        options.engine.profile.check()
    check_positive(options.engine.workspace_gib, "--workspace", MAX_WORKSPACE_GIB)  # GiB; NaN refused too
    check_calibration(options.calibration)
    if options.calibration.method == ALL_METHODS and options.precision != "int8":
        raise UserError(
            f"--method all compares the INT8 calibration methods; it needs --precision int8, not {options.precision}"
        )


def lint_or_fail(artifact, graph: str, allow_fp16_norms: bool) -> dict:
    """Run the readiness lint on one graph; a graph TensorRT would reject stops here."""
    import onnx

    report = lint_graph(onnx.load(str(artifact.require(graph, "re-export it"))), graph, allow_fp16_norms)
    if not report.ok:
        raise UserError(
            f"{graph} is not ready for TensorRT {report.tensorrt_version}: " + "; ".join(report.problems[:5])
        )
    return report.to_dict()


def _keeps_graph(ctx, graph: str) -> bool:
    """Growing an artifact keeps a precision graph already there, unless --force or calibration flags ask
    for a new one (``ctx.options.explicit`` holds the flags the user typed)."""
    from mfdeploy.export.growth import CALIBRATION_FLAGS

    if ctx.options.force or any(flag in ctx.options.explicit for flag in CALIBRATION_FLAGS):
        return False
    return ctx.artifact.has(graph) and ctx.artifact.file_status(graph) == OK


def _calibrated_with(manifest: dict, precision: str) -> str:
    """How the kept graph was made, from the manifest's calibration entry for its precision."""
    section = manifest.get("calibration") or {}
    entry = section.get(precision) if isinstance(section.get(precision), dict) else section
    data = entry.get("data") or section.get("data") or {}
    how = f"{entry.get('method')} ranges" if precision == "int8" and entry.get("method") else "FP32 islands"
    return f"{how}, {data.get('images', '?')} images from {data.get('source', '?')}"


def run_stage(ctx) -> None:
    """Calibrate (FP16/INT8), lint, and build the engine if this host can."""
    options: TensorRTOptions = ctx.options.stage_options.get("trt") or TensorRTOptions()
    check_trt_options(options)
    precision = options.precision
    graph = GRAPH_FOR_PRECISION[precision]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if precision != "fp32":
        if _keeps_graph(ctx, graph):
            ctx.notes.append(
                f"kept {graph} (calibrated before: {_calibrated_with(ctx.manifest, precision)}); pass calibration "
                "options or --force to calibrate it again"
            )
        else:
            calibration = CalibrationOptions(**{**options.calibration.__dict__, "precisions": (precision,)})
            calibrate_artifact(ctx.artifact, calibration)
            timings["calibrate_s"] = round(time.perf_counter() - started, 3)
    section = ctx.manifest.setdefault("tensorrt", {})
    section.update({"precision": precision, "graph": graph, "timings_s": timings})
    started = time.perf_counter()
    section["lint"] = lint_or_fail(ctx.artifact, graph, not options.calibration.keep_norms_fp32)
    timings["lint_s"] = round(time.perf_counter() - started, 3)

    reason = tensorrt_unavailable_reason()
    if reason is None:
        started = time.perf_counter()
        entry = build_engine(ctx.artifact, options.engine)
        timings["engine_s"] = round(time.perf_counter() - started, 3)
        ctx.notes.append(
            f"built {entry['file']} ({precision}) in {entry['build_seconds']:.1f} s on {entry['gpu_name']}"
        )
        return
    message = "\n".join(
        [
            f"TensorRT engine not built: {reason}. The TensorRT-ready {precision.upper()} graph is "
            f"{display_path(ctx.final_root / graph)} (linted for TensorRT {section['lint']['tensorrt_version']}).",
            *gpu_host_instructions(ctx.final_root, ctx.manifest, options.engine),
        ]
    )
    # Portable: run in the folder that holds the artifact folder, on whichever host it was copied to.
    section["engine"] = {
        "skipped": reason,
        "command": build_command(ctx.final_root, options.engine),
        "trtexec_command": trtexec_command(ctx.manifest, options.engine, ctx.final_root.name),
        "run_in": f"the folder that holds {ctx.final_root.name}",
    }
    if ctx.options.target == "trt":
        ctx.notes.append(message)
        ctx.exit_code = EXIT_NO_TENSORRT
    else:
        ctx.notes.append("skipped: " + message)
