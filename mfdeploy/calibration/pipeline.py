"""`mfdeploy calibrate`: statistics once, then the INT8 and FP16 graphs, checked and reported.

Run on an artifact folder (or on the staged folder of `mfdeploy export --target trt`): the FP32
graph is prepared with ONNX Runtime's quant_pre_process (shape inference only, so every tensor keeps
its name), run once over the calibration set, and the statistics are cached under
``calibration/stats-<key>.npz``. Any later method or percentile reuses them.

Each INT8 method keeps its own graph and report under ``calibration/<method>/``; model.int8.onnx, the
graph TensorRT builds from, is a copy of one of them (the one asked for, or with ``--method all`` the
best of the three by ``--select``). The FP16 graph does not depend on the method: it is written once.
A graph this run does not write (``--precision int8`` beside an earlier FP16 graph) stays listed, with
its report section, and is evaluated again with the others, as long as it is intact.
"""

from __future__ import annotations

import json
import shutil
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
    CALIBRATION_METHODS,
    OK,
    ONNX_FILE,
    Artifact,
    ArtifactUpdate,
    method_file,
    precision_graph,
    utc_now,
)
from mfdeploy.calibration.census import precision_census
from mfdeploy.calibration.evaluation import evaluate_graphs, evaluation_steps, judge_graphs
from mfdeploy.calibration.fp16 import Fp32Island, choose_fp32_islands, group_islands, to_fp16
from mfdeploy.calibration.int8 import QuantizationPlan, on_fp16_base, plan_quantization, quantize
from mfdeploy.calibration.options import ALL_METHODS, CALIBRATION_DATA, CalibrationOptions, check_options
from mfdeploy.calibration.ranges import TensorRange, compute_ranges
from mfdeploy.calibration.report import render_markdown
from mfdeploy.calibration.selection import select_method
from mfdeploy.calibration.stats import CalibrationStats, collect_stats, stats_key
from mfdeploy.console import err, steps
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
# Why a census counts an FP32 node that is no island: the INT8 graph's FP32 base, or (never expected) a node
# the FP16 converter left in FP32.
FP32_BASE = "the INT8 graph's FP32 base (--int8-base fp32)"
LEFT_FP32 = "left FP32 by the FP16 converter"
DATA_INDEX = f"{CALIBRATION_DIR}/data-index.json"
REPORT_SCHEMA_VERSION = 1
# Where a report section came from: the run that wrote its graph, which may be an earlier one.
PROVENANCE = ("created", "data", "stats_key", "model_sha256")


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


def _cached_stats(artifact: Artifact, cache: Path, key: str, needed: list[str]) -> CalibrationStats | None:
    """The cached statistics when the manifest vouches for them and they hold a histogram of every tensor
    this run quantizes (an older mfdeploy quantized fewer: its cache is then remade, not half used)."""
    name = cache.relative_to(artifact.root).as_posix()
    stats = CalibrationStats.load(cache, key) if cache.exists() and _vouched_for(artifact, name) else None
    if stats is not None and not all(stats.has_histogram(tensor) for tensor in needed):
        return None
    return stats


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


def _write_reports(update: ArtifactUpdate, json_name: str, md_name: str, report: dict[str, Any], artifact) -> None:
    with atomic_path(update.path(json_name)) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(update.path(md_name)) as tmp:
        tmp.write_text(render_markdown(report, artifact))


def _vouched_json(artifact: Artifact, name: str) -> dict[str, Any]:
    """A JSON file of the artifact that the manifest vouches for, as a dict; {} when absent, changed or bad."""
    if not _vouched_for(artifact, name):
        return {}
    try:
        value = json.loads(artifact.path(name).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _kept_sections(
    artifact: Artifact, options: CalibrationOptions, model_sha: str, quantized_nodes: int
) -> dict[str, dict[str, Any]]:
    """The report sections of the graphs this run does not write but that stay valid: intact (the sha256
    the manifest lists) and made from this model.onnx. Taken from the last calibration.json when the
    manifest vouches for it, else from the manifest's own summary of the graph."""
    old_report = _vouched_json(artifact, CALIBRATION_JSON)
    old = _dict(artifact.manifest.get("calibration"))
    kept = {}
    for precision in CALIBRATED_PRECISIONS:
        if precision in options.precisions or artifact.file_status(GRAPH_FILES[precision]) != OK:
            continue
        section = dict(_dict(old_report.get(precision)))
        if section and not section.get("kept"):
            # the run that wrote the report wrote this graph: a report of an older mfdeploy gives the
            # provenance once, at its top (a kept section has its own, or none known)
            stats = _dict(old_report.get("stats"))
            for key, value in (("created", old_report.get("created")), ("data", old_report.get("data"))):
                section.setdefault(key, value)
            section.setdefault("stats_key", stats.get("key"))
            if precision == "int8":
                section.setdefault("method", old_report.get("method"))
                section.setdefault("percentile", old_report.get("percentile"))
        elif not section:
            section = dict(_dict(old.get(precision)))
            if not section and precision in _dict(old.get("graphs")):  # the manifest of an older mfdeploy
                section = {"data": old.get("data"), "stats_key": old.get("stats_key")}
                if precision == "int8":
                    section.update(method=old.get("method"), percentile=old.get("percentile"))
            if isinstance(section.get("fp32_islands"), int):  # the manifest counts islands; reports list them
                section["fp32_island_count"] = section.pop("fp32_islands")
            section.pop("vs_fp32", None)
        if section.get("model_sha256") not in (None, model_sha):
            continue  # made from another model.onnx: no longer valid
        if precision == "fp16":
            section.setdefault("norms_kept_fp32", old.get("norms_kept_fp32", True))
            islands = section.get("fp32_islands")
            if isinstance(islands, list) and not isinstance(section.get("fp32_island_groups"), list):
                # a report of an older mfdeploy lists islands without groups: grouped by their reason text
                section["fp32_island_groups"] = group_islands(
                    [
                        Fp32Island(
                            str(i.get("node")), str(i.get("op_type")), str(i.get("reason")), str(i.get("group", ""))
                        )
                        for i in islands
                        if isinstance(i, dict)
                    ]
                )
        if precision == "int8":
            section.setdefault("quantized_nodes", quantized_nodes)
        section.update(file=GRAPH_FILES[precision], kept=True)
        kept[precision] = section
    return kept


def _kept_methods(artifact: Artifact, model_sha: str, written: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The manifest entries of INT8 methods calibrated by earlier runs whose graph and report are intact."""
    old = _dict(_dict(artifact.manifest.get("calibration")).get("methods"))
    kept = {}
    for method in CALIBRATION_METHODS:
        entry = _dict(old.get(method))
        if method in written or not entry or entry.get("model_sha256") not in (None, model_sha):
            continue
        names = [method_file(method, n) for n in (GRAPH_FILES["int8"], CALIBRATION_JSON, CALIBRATION_MD)]
        if all(artifact.file_status(name) == OK for name in names):
            kept[method] = entry
    return kept


def _int8_section(plan: QuantizationPlan, ranges: dict[str, TensorRange], method: str, percentile: float):
    clipped = [r.clipped_share for r in ranges.values()]
    return {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "quantized_nodes": len(plan.nodes),
        "float_nodes": plan.excluded,
        "residual_adds": plan.residuals,
        "clipped_share": {
            "mean": float(np.mean(clipped)) if clipped else 0.0,
            "max": float(np.max(clipped)) if clipped else 0.0,
        },
        "guarded_ranges": sum(1 for r in ranges.values() if r.method_threshold is not None),
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 symmetric (zero point 0), per tensor",
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
    }


def _install(source: Path, target: Path) -> None:
    """model.int8.onnx as a byte-for-byte copy of one method's graph."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def calibrate_artifact(artifact: Artifact, options: CalibrationOptions) -> dict[str, Any]:
    """Write the requested precision graphs and the calibration report into ``artifact``.

    Everything it writes (graphs, statistics, reports, manifest) lands as one unit: an error or an
    interruption leaves the artifact as it was, and no other command can change it meanwhile.
    """
    check_options(options)
    with artifact.update("calibrate") as update, steps(f"calibrate {artifact.size}", _step_count(options)) as step:
        return _calibrate(artifact, options, update, step)


def _step_count(options: CalibrationOptions) -> int:
    """The steps the progress row names: preparation, statistics, each graph written, then the evaluation
    (graphs kept from an earlier run are evaluated too; the row's total grows when there are some)."""
    graphs = (len(options.methods) if "int8" in options.precisions else 0) + ("fp16" in options.precisions)
    return 2 + graphs + evaluation_steps(graphs, options.measure_latency)


def _statistics(
    artifact: Artifact, options: CalibrationOptions, update: ArtifactUpdate, prepared, plan, model_sha, choice
):
    """The FP32 statistics of this model on the chosen data: from the cache when a finished run left them."""
    in_chans = artifact.in_chans
    # A data fingerprint seen before names its data hash, so cached statistics are found without
    # decoding any image; otherwise the data is loaded and hashed.
    known = _read_data_index(update.current(DATA_INDEX)) if _vouched_for(artifact, DATA_INDEX) else {}
    print_ = fingerprint(choice.spec, artifact.preprocessing, options.num_images, in_chans)
    data_info = known.get(print_) if print_ else None
    stats = None
    if data_info is not None:
        key = stats_key(model_sha, data_info["sha256"], artifact.manifest["preprocessing"])
        cache = artifact.path(CALIBRATION_DIR) / f"stats-{key}.npz"
        stats = _cached_stats(artifact, cache, key, plan.activations)
    if stats is None:
        data = load_image_set(choice.spec, artifact.preprocessing, options.num_images, in_chans)
        data_info = data.describe()
        if print_:
            known[print_] = data_info
            _write_data_index(update.path(DATA_INDEX), known)
        key = stats_key(model_sha, data.sha256, artifact.manifest["preprocessing"])
        cache = artifact.path(CALIBRATION_DIR) / f"stats-{key}.npz"
        stats = _cached_stats(artifact, cache, key, plan.activations)
    reused = stats is not None
    if stats is None:
        with tempfile.TemporaryDirectory() as tmp:
            prepared_path = Path(tmp) / "prepared.onnx"
            onnx.save_model(prepared, str(prepared_path))
            stats = collect_stats(prepared_path, data.images, plan.activations, options.batch, key, options.threads)
        stats.save(update.path(f"{CALIBRATION_DIR}/{cache.name}"))
    else:
        err.print(f"reusing cached statistics {cache.name} (same model, data and preprocessing)", markup=False)
    summary = {
        "file": f"{CALIBRATION_DIR}/{cache.name}",
        "key": key,
        "reused": reused,
        "collect_seconds": stats.meta.get("seconds"),
    }
    return stats, data_info | choice.describe(), summary


def _calibrate(artifact: Artifact, options: CalibrationOptions, update: ArtifactUpdate, step) -> dict[str, Any]:
    started = time.perf_counter()
    source = artifact.require(ONNX_FILE, "export it first with `mfdeploy export --target onnx`")
    step("prepare the FP32 graph (shape inference)")
    prepared = _prepared_graph(source)
    plan = plan_quantization(prepared)
    model_sha = sha256_file(source)
    timings: dict[str, float] = {}

    step("calibration data and FP32 statistics")
    choice = choose_data(options.data, artifact.trained_on, CALIBRATION_DATA)
    stats, data_info, stats_summary = _statistics(artifact, options, update, prepared, plan, model_sha, choice)
    timings["statistics"] = round(time.perf_counter() - started, 3)
    created = utc_now()
    provenance = {"created": created, "data": data_info, "stats_key": stats_summary["key"], "model_sha256": model_sha}
    kept = _kept_sections(artifact, options, model_sha, len(plan.nodes))

    # -- the graphs: one INT8 graph per method asked for, the FP16 graph once ---------------------------
    methods = options.methods if "int8" in options.precisions else ()
    fp16_base = bool(methods) and options.int8_base == "fp16"
    islands = (
        choose_fp32_islands(prepared, stats, options.keep_norms_fp32)
        if fp16_base or "fp16" in options.precisions
        else []
    )
    graphs: dict[str, Path] = {}  # evaluation label -> graph
    labels: dict[str, str] = {}  # evaluation label -> precision
    int8_sections: dict[str, dict[str, Any]] = {}
    for method in methods:
        step(f"INT8 graph: {method} ranges, Q/DQ pairs, TensorRT's Q/DQ rules")
        ranges = compute_ranges(stats, plan.activations, method, options.percentile)
        quantized = quantize(prepared, plan, ranges)
        if fp16_base:
            quantized, int8_islands = on_fp16_base(quantized, islands)
            census = precision_census(quantized, int8_islands, LEFT_FP32)
        else:
            census = precision_census(quantized, [], FP32_BASE)
        problems = check_tensorrt_qdq(quantized)
        if problems:
            raise UserError(f"the {method} INT8 graph breaks TensorRT's Q/DQ rules: " + "; ".join(problems[:5]))
        name = method_file(method, GRAPH_FILES["int8"])
        _save_graph(quantized, update.path(name))
        int8_sections[method] = {
            "file": name,
            "report": method_file(method, CALIBRATION_JSON),
            **_int8_section(plan, ranges, method, options.percentile),
            "base": options.int8_base,
            "census": census,
            **provenance,
        }
        graphs[f"int8 {method}"], labels[f"int8 {method}"] = update.path(name), "int8"
    fp16_section = None
    if "fp16" in options.precisions:
        step("FP16 graph: FP32 islands, casts")
        fp16_graph = to_fp16(prepared, islands)
        _save_graph(fp16_graph, update.path(GRAPH_FILES["fp16"]))
        fp16_section = {
            "file": GRAPH_FILES["fp16"],
            "norms_kept_fp32": options.keep_norms_fp32,
            "fp32_island_groups": group_islands(islands),
            "fp32_islands": [
                {"node": i.node, "op_type": i.op_type, "reason": i.reason, "group": i.group} for i in islands
            ],
            "census": precision_census(fp16_graph, islands, LEFT_FP32),
            **provenance,
        }
        graphs["fp16"], labels["fp16"] = update.path(GRAPH_FILES["fp16"]), "fp16"
    for precision in kept:  # valid graphs of earlier runs: evaluated again beside the new ones
        graphs[precision], labels[precision] = artifact.path(GRAPH_FILES[precision]), precision
    timings["graphs"] = round(time.perf_counter() - started - timings["statistics"], 3)

    # -- how far each graph is from FP32, and which method becomes model.int8.onnx ---------------------
    evaluation_started = time.perf_counter()
    holdout, holdout_section = _holdout_images(artifact, choice.spec, options, artifact.in_chans)
    measured = evaluate_graphs(
        source,
        graphs,
        holdout,
        len(plan.nodes),
        options.threads,
        options.measure_latency,
        precisions=labels,
        step=step,
    )
    timings["evaluation"] = round(time.perf_counter() - evaluation_started, 3)
    latency = measured.get("ort_cpu_latency_ms", {})
    untrained = artifact.untrained
    selection = None
    if methods:
        figures = {m: measured["graphs"][f"int8 {m}"]["vs_fp32"] for m in methods}
        if options.method == ALL_METHODS:
            selection = select_method(figures, options.select_metric, untrained)
            chosen = selection["chosen"]
        else:
            chosen = methods[0]
        _install(update.path(int8_sections[chosen]["file"]), update.path(GRAPH_FILES["int8"]))

    def evaluation_of(entries: dict[str, str]) -> dict[str, Any]:
        """The evaluation block of a report over ``entries`` (precision -> evaluation label)."""
        block: dict[str, Any] = {
            "holdout_images": measured["holdout_images"],
            "graphs": {p: measured["graphs"][label] for p, label in entries.items()},
        }
        if options.measure_latency:
            block["ort_cpu_latency_ms"] = {"fp32": latency["fp32"], **{p: latency[lb] for p, lb in entries.items()}}
            block["threads"] = measured.get("threads")
        return block

    common = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": created,
        "data": data_info,
        "holdout": holdout_section,
        "preprocessing": artifact.manifest["preprocessing"],
        "stats": stats_summary,
        "untrained": untrained,
        "untrained_note": untrained_note(untrained),
    }

    # -- each method's own report, beside its graph -----------------------------------------------------
    method_summaries = {}
    for method in methods:
        evaluation = evaluation_of({"int8": f"int8 {method}"})
        own = {
            **common,
            "method": method,
            "percentile": int8_sections[method]["percentile"],
            "int8": int8_sections[method],
            "evaluation": evaluation,
            "verdict": judge_graphs(evaluation["graphs"], untrained),
        }
        _write_reports(
            update, method_file(method, CALIBRATION_JSON), method_file(method, CALIBRATION_MD), own, artifact
        )
        method_summaries[method] = {
            "graph": int8_sections[method]["file"],
            "report": int8_sections[method]["report"],
            "percentile": int8_sections[method]["percentile"],
            "vs_fp32": evaluation["graphs"]["int8"]["vs_fp32"],
            "clipped_share": int8_sections[method]["clipped_share"],
            "guarded_ranges": int8_sections[method]["guarded_ranges"],
            "base": options.int8_base,
            "verdict": own["verdict"]["precisions"]["int8"]["status"],
            **provenance,
        }

    # -- the report of the graphs the artifact now holds ------------------------------------------------
    sections: dict[str, dict[str, Any]] = {}
    entries: dict[str, str] = {}
    if methods:
        sections["int8"] = {
            **int8_sections[chosen],
            "file": GRAPH_FILES["int8"],
            "source": int8_sections[chosen]["file"],
            "selected_by": {k: selection[k] for k in ("metric", "why")} if selection else None,
        }
        entries["int8"] = f"int8 {chosen}"
    if fp16_section is not None:
        sections["fp16"], entries["fp16"] = fp16_section, "fp16"
    for precision, section in kept.items():
        sections[precision], entries[precision] = section, precision
    sections = {p: sections[p] for p in CALIBRATED_PRECISIONS if p in sections}
    entries = {p: entries[p] for p in sections}
    evaluation = evaluation_of(entries)
    all_methods = {**_kept_methods(artifact, model_sha, methods), **method_summaries}
    all_methods = {m: all_methods[m] for m in CALIBRATION_METHODS if m in all_methods}
    int8 = sections.get("int8", {})
    run = {
        "method": options.method,
        "select": options.select_metric if options.method == ALL_METHODS else None,
        "precisions": list(options.precisions),
        "percentile": options.percentile if "percentile" in methods else None,
        "base": options.int8_base if methods else None,
        "created": created,
    }
    report = {
        **common,
        "method": int8.get("method"),
        "percentile": int8.get("percentile"),
        "run": run,
        **sections,
        "methods": method_summaries,
        "method_files": {
            m: {k: e.get(k) for k in ("graph", "report", "created", "data")} | {"this_run": m in method_summaries}
            for m, e in all_methods.items()
        },
        "selection": selection,
        "evaluation": evaluation,
        "verdict": judge_graphs(evaluation["graphs"], untrained),
    }
    report["timings_s"] = timings
    report["seconds"] = round(time.perf_counter() - started, 3)
    _write_reports(update, CALIBRATION_JSON, CALIBRATION_MD, report, artifact)

    fp16 = sections.get("fp16", {})
    summary_keys = ("file", *PROVENANCE)
    artifact.manifest["calibration"] = {
        "method": int8.get("method"),  # the method model.int8.onnx is
        "percentile": int8.get("percentile"),
        "selected_by": int8.get("selected_by"),  # --method all: the metric that chose it, and why
        "run": run,
        "data": data_info,
        "stats_key": stats_summary["key"],
        "report": CALIBRATION_JSON,
        "graphs": {p: GRAPH_FILES[p] for p in sections},
        **(
            {
                "int8": {
                    **{k: int8.get(k) for k in summary_keys},
                    "method": int8.get("method"),
                    "percentile": int8.get("percentile"),
                    "base": int8.get("base"),
                    "census": _census_summary(int8),
                    "source": int8.get("source"),
                    "selected_by": int8.get("selected_by"),
                }
            }
            if int8
            else {}
        ),
        **(
            {
                "fp16": {
                    **{k: fp16.get(k) for k in summary_keys},
                    "norms_kept_fp32": fp16.get("norms_kept_fp32"),
                    "fp32_islands": _island_count(fp16),
                    "census": _census_summary(fp16),
                }
            }
            if fp16
            else {}
        ),
        "methods": all_methods,
        "fp32_islands": _island_count(fp16) if fp16 else 0,
        "norms_kept_fp32": fp16.get("norms_kept_fp32", options.keep_norms_fp32) if fp16 else options.keep_norms_fp32,
        "agreement": {p: evaluation["graphs"][p]["vs_fp32"] for p in sections},
        "verdict": "passed" if report["verdict"]["passed"] else "failed",
    }
    return report


def _island_count(section: dict[str, Any]) -> int | None:
    islands = section.get("fp32_islands")
    return len(islands) if isinstance(islands, list) else section.get("fp32_island_count")


def _census_summary(section: dict[str, Any]) -> dict[str, Any] | None:
    """The census counts without the per-node list, for the manifest."""
    census = section.get("census")
    if not isinstance(census, dict):
        return None
    return {k: census.get(k) for k in ("compute_nodes", "nodes", "madds_share")}
