"""`mfdeploy calibrate`: statistics once, then the INT8 and FP16 graphs, checked and reported.

Run on an artifact folder (or on the staged folder of `mfdeploy export --target trt`): the FP32
graph is prepared with ONNX Runtime's quant_pre_process (shape inference only, so every tensor keeps
its name), run once over the calibration set, and the statistics are cached under
``calibration/stats-<key>.npz``. Any later method or percentile reuses them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mfdeploy.artifacts import (
    CALIBRATED_PRECISIONS,
    CALIBRATION_DIR,
    CALIBRATION_JSON,
    CALIBRATION_MD,
    OK,
    ONNX_FILE,
    Artifact,
    ArtifactUpdate,
    precision_graph,
    utc_now,
)
from mfdeploy.calibration.evaluation import evaluate_graphs, judge_graphs
from mfdeploy.calibration.fp16 import choose_fp32_islands, to_fp16
from mfdeploy.calibration.int8 import plan_quantization, quantize
from mfdeploy.calibration.options import CALIBRATION_DATA, CalibrationOptions, check_options
from mfdeploy.calibration.ranges import compute_ranges
from mfdeploy.calibration.report import render_markdown
from mfdeploy.calibration.stats import CalibrationStats, collect_stats, stats_key
from mfdeploy.console import err
from mfdeploy.errors import UserError
from mfdeploy.fileio import atomic_path, sha256_file
from mfdeploy.graph.checks import check_graph
from mfdeploy.graph.tensorrt_lint import check_tensorrt_qdq
from mfdeploy.images.choice import choose_data
from mfdeploy.images.datasets import BUILTIN_DIGITS, VALIDATION
from mfdeploy.images.samples import builtin_images
from mfdeploy.images.sets import BUILTIN, fingerprint, load_image_set
from mfdeploy.thresholds import untrained_note

GRAPH_FILES = {p: precision_graph(p) for p in CALIBRATED_PRECISIONS}
DATA_INDEX = f"{CALIBRATION_DIR}/data-index.json"


def _prepared_graph(source: Path) -> onnx.ModelProto:
    """quant_pre_process with shape inference only: the graph keeps every node and tensor name."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(target), skip_optimization=True)
        return onnx.load(str(target))


def _holdout_images(
    artifact: Artifact, spec: str, options: CalibrationOptions, in_chans: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Images the calibration did not see, and what they are: the validation split of builtin-digits when it
    calibrated on the digits' training split; built-in photographs otherwise (further crops and flips when
    it used builtin)."""
    if spec == BUILTIN_DIGITS and options.holdout:
        held = load_image_set(BUILTIN_DIGITS, artifact.preprocessing, options.holdout, in_chans, split=VALIDATION)
        return held.images, {"source": BUILTIN_DIGITS, "split": VALIDATION}
    skip = options.num_images if spec == BUILTIN else 0
    images = artifact.preprocessing.batch(builtin_images(skip + options.holdout)[skip:])
    if in_chans != 3:
        images = np.repeat(images.mean(axis=1, keepdims=True), in_chans, axis=1)
    return images, {"source": BUILTIN}


def _save_graph(model: onnx.ModelProto, path: Path) -> None:
    report = check_graph(model)
    if not report.ok:
        raise UserError(f"the {path.name} graph breaks the deployment rules: " + "; ".join(report.violations))
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def _vouched_for(artifact: Artifact, name: str) -> bool:
    """Whether the manifest lists cache file ``name`` with its current sha256: a cache that changed (or that
    no finished run recorded) is recomputed, never trusted, so `mfdeploy calibrate` does remake it."""
    return artifact.file_status(name) == OK


def _cached_stats(artifact: Artifact, cache: Path, key: str) -> CalibrationStats | None:
    name = cache.relative_to(artifact.root).as_posix()
    return CalibrationStats.load(cache, key) if cache.exists() and _vouched_for(artifact, name) else None


def _read_data_index(path: Path) -> dict[str, Any]:
    """Fingerprint -> data description; only well-formed entries (a damaged index is just a cache miss)."""
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: invalid JSON or bytes that are not UTF-8
        return {}
    if not isinstance(index, dict):
        return {}
    return {k: v for k, v in index.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


def _write_data_index(path: Path, index: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n")


def calibrate_artifact(artifact: Artifact, options: CalibrationOptions) -> dict[str, Any]:
    """Write the requested precision graphs and the calibration report into ``artifact``.

    Everything it writes (graphs, statistics, reports, manifest) lands as one unit: an error or an
    interruption leaves the artifact as it was, and no other command can change it meanwhile.
    """
    check_options(options)
    with artifact.update("calibrate") as update:
        return _calibrate(artifact, options, update)


def _calibrate(artifact: Artifact, options: CalibrationOptions, update: ArtifactUpdate) -> dict[str, Any]:
    started = time.perf_counter()
    source = artifact.require(ONNX_FILE, "export it first with `mfdeploy export --target onnx`")
    in_chans = artifact.in_chans
    prepared = _prepared_graph(source)
    plan = plan_quantization(prepared)

    timings: dict[str, float] = {}
    choice = choose_data(options.data, artifact.trained_on, CALIBRATION_DATA)
    model_sha = sha256_file(source)
    # A data fingerprint seen before names its data hash, so cached statistics are found without
    # decoding any image; otherwise the data is loaded and hashed.
    known = _read_data_index(update.current(DATA_INDEX)) if _vouched_for(artifact, DATA_INDEX) else {}
    print_ = fingerprint(choice.spec, artifact.preprocessing, options.num_images, in_chans)
    data_info = known.get(print_) if print_ else None
    stats = None
    if data_info is not None:
        key = stats_key(model_sha, data_info["sha256"], artifact.manifest["preprocessing"])
        cache = artifact.path(CALIBRATION_DIR) / f"stats-{key}.npz"
        stats = _cached_stats(artifact, cache, key)
    if stats is None:
        data = load_image_set(choice.spec, artifact.preprocessing, options.num_images, in_chans)
        data_info = data.describe()
        if print_:
            known[print_] = data_info
            _write_data_index(update.path(DATA_INDEX), known)
        key = stats_key(model_sha, data.sha256, artifact.manifest["preprocessing"])
        cache = artifact.path(CALIBRATION_DIR) / f"stats-{key}.npz"
        stats = _cached_stats(artifact, cache, key)
    timings["data"] = round(time.perf_counter() - started, 3)
    reused = stats is not None
    if stats is None:
        with tempfile.TemporaryDirectory() as tmp:
            prepared_path = Path(tmp) / "prepared.onnx"
            onnx.save_model(prepared, str(prepared_path))
            stats = collect_stats(prepared_path, data.images, plan.activations, options.batch, key, options.threads)
        stats.save(update.path(f"{CALIBRATION_DIR}/{cache.name}"))
    else:
        err.print(f"reusing cached statistics {cache.name} (same model, data and preprocessing)", markup=False)
    timings["stats"] = round(time.perf_counter() - started - timings["data"], 3)

    written: dict[str, Path] = {}
    report: dict[str, Any] = {
        "schema_version": 1,
        "created": utc_now(),
        "method": options.method,
        "percentile": options.percentile if options.method == "percentile" else None,
        "data": data_info | choice.describe(),
        "preprocessing": artifact.manifest["preprocessing"],
        "stats": {
            "file": f"{CALIBRATION_DIR}/{cache.name}",
            "key": key,
            "reused": reused,
            "collect_seconds": stats.meta.get("seconds"),
        },
    }
    if "int8" in options.precisions:
        ranges = compute_ranges(stats, plan.activations, options.method, options.percentile)
        quantized = quantize(prepared, plan, ranges)
        problems = check_tensorrt_qdq(quantized)
        if problems:
            raise UserError("the INT8 graph breaks TensorRT's Q/DQ rules: " + "; ".join(problems[:5]))
        written["int8"] = update.path(GRAPH_FILES["int8"])
        _save_graph(quantized, written["int8"])
        report["int8"] = {
            "file": GRAPH_FILES["int8"],
            "quantized_nodes": len(plan.nodes),
            "float_nodes": plan.excluded,
            "activation_ranges": {
                name: {
                    "threshold": r.threshold,
                    "scale": r.scale,
                    "absmax": r.absmax,
                    "clipped_share": r.clipped_share,
                    **({"raised_from": r.method_threshold} if r.method_threshold is not None else {}),
                }
                for name, r in ranges.items()
            },
            "guarded_ranges": sum(1 for r in ranges.values() if r.method_threshold is not None),
            "weights": "int8 symmetric, per output channel",
            "activations": "int8 symmetric (zero point 0), per tensor",
        }
    if "fp16" in options.precisions:
        islands = choose_fp32_islands(prepared, stats, options.keep_norms_fp32)
        written["fp16"] = update.path(GRAPH_FILES["fp16"])
        _save_graph(to_fp16(prepared, islands), written["fp16"])
        report["fp16"] = {
            "file": GRAPH_FILES["fp16"],
            "fp32_islands": [{"node": i.node, "op_type": i.op_type, "reason": i.reason} for i in islands],
            "norms_kept_fp32": options.keep_norms_fp32,
        }
    timings["graphs"] = round(time.perf_counter() - started - timings["data"] - timings["stats"], 3)
    evaluation_started = time.perf_counter()
    holdout, report["holdout"] = _holdout_images(artifact, choice.spec, options, in_chans)
    report["evaluation"] = evaluate_graphs(
        source, written, holdout, len(plan.nodes), options.threads, options.measure_latency
    )
    timings["evaluation"] = round(time.perf_counter() - evaluation_started, 3)
    report["untrained"] = artifact.untrained
    report["untrained_note"] = untrained_note(artifact.untrained)
    report["verdict"] = judge_graphs(report["evaluation"]["graphs"], artifact.untrained)
    report["timings_s"] = timings
    report["seconds"] = round(time.perf_counter() - started, 3)

    update.path(CALIBRATION_JSON).write_text(json.dumps(report, indent=2) + "\n")
    update.path(CALIBRATION_MD).write_text(render_markdown(report, artifact))
    artifact.manifest["calibration"] = {
        "method": options.method,
        "percentile": report["percentile"],
        "data": report["data"],
        "stats_key": key,
        "report": CALIBRATION_JSON,
        "graphs": {p: GRAPH_FILES[p] for p in written},
        "fp32_islands": len(report.get("fp16", {}).get("fp32_islands", [])),
        "norms_kept_fp32": options.keep_norms_fp32,
        "agreement": {p: report["evaluation"]["graphs"][p]["vs_fp32"] for p in written},
        "verdict": "passed" if report["verdict"]["passed"] else "failed",
    }
    return report
