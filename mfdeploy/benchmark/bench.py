"""`mfdeploy bench`: every requested target at every batch size, one fresh process per cell, assembled
into one result file that records what was measured, on what, and how far to trust it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfdeploy.artifacts import Artifact, utc_now
from mfdeploy.benchmark.accuracy import AccuracyRequest
from mfdeploy.benchmark.cell import CellRequest
from mfdeploy.benchmark.schema import RESULT_KIND, SCHEMA_VERSION, check_result
from mfdeploy.benchmark.stats import Summary, spread_warnings
from mfdeploy.environment import default_device_name, host_environment
from mfdeploy.errors import UserError
from mfdeploy.option_values import (
    MAX_RUNS,
    MAX_SECONDS,
    MAX_TOP,
    MAX_WARMUP,
    check_batch,
    check_int,
    check_positive,
    check_threads,
)
from mfdeploy.runtime.timing import TimingPlan
from mfdeploy.thresholds import untrained_note

if TYPE_CHECKING:
    from mfdeploy.images.datasets import LabelledData
    from mfdeploy.images.labelled import LabelledImages

# A machine whose 1-minute load average already exceeds this share of its cores before the benchmark
# starts is running something else that competes for the cores being measured.
BUSY_LOAD_SHARE = 0.5
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
DEFAULT_BATCHES = (1,)  # what --batches measures when it is not given


@dataclass
class BenchOptions:
    artifact: Path
    targets: list[str]
    batches: list[int]
    plan: TimingPlan = field(default_factory=TimingPlan)
    threads: int | None = None
    provider: str | None = None  # ONNX Runtime execution provider: cpu, cuda, tensorrt
    compute_units: str | None = None  # Core ML
    profile: bool = False
    top: int = 10
    device_name: str | None = None
    command: str | None = None  # the command line, recorded for whoever reruns it
    temporary_artifact: bool = False  # exported for this run only (bench --size)
    data: str | None = None  # labelled data (builtin-digits or an ImageFolder): each target's accuracy too
    cuda_graphs: bool = False  # TensorRT targets replay a captured CUDA graph; other backends ignore it

    def runner_options(self) -> dict[str, Any]:
        """Only what the user set: runners ignore options that do not concern them."""
        options = {"threads": self.threads, "provider": self.provider, "compute_units": self.compute_units}
        if self.cuda_graphs:
            options["cuda_graphs"] = True
        return {key: value for key, value in options.items() if value is not None}


def timing_plan(warmup: int | None = None, runs: int | None = None, min_time: float | None = None) -> TimingPlan:
    """The timing plan from command-line values (None: not given): ``runs`` calls or ``min_time`` seconds."""
    defaults = TimingPlan()
    if runs is not None and min_time is not None:
        raise UserError("pass either --runs N or --min-time SECONDS, not both")
    if runs is not None and runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    if min_time is not None and not 0 < min_time < float("inf"):
        raise UserError(f"--min-time must be a positive number of seconds, got {min_time}")
    warmup = defaults.warmup if warmup is None else warmup
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    plan_ranges(warmup, runs, min_time)
    if min_time is not None:
        return TimingPlan(warmup=warmup, runs=None, min_time_s=min_time)
    return TimingPlan(warmup=warmup, runs=defaults.runs if runs is None else runs)


def plan_ranges(warmup: int | None, runs: int | None, min_time: float | None) -> None:
    """Upper bounds on the timing plan: --min-time 1e300 or --runs 10**12 would never finish."""
    if warmup is not None:
        check_int(warmup, "--warmup", 0, MAX_WARMUP)
    if runs is not None:
        check_int(runs, "--runs", 1, MAX_RUNS)
    if min_time is not None:
        check_positive(min_time, "--min-time", MAX_SECONDS)


def check_options(options: BenchOptions) -> None:
    """Refuse bad settings before the first cell runs (one line each)."""
    from mfdeploy.runtime.onnxruntime_runner import PROVIDERS

    check_threads(options.threads)
    check_int(options.top, "--top", 1, MAX_TOP)
    for batch in options.batches:
        check_batch(batch, "--batches")
    plan_ranges(options.plan.warmup, options.plan.runs, options.plan.min_time_s)
    if options.provider is not None and options.provider not in PROVIDERS:
        raise UserError(f"unknown provider {options.provider!r}; choose one of {', '.join(PROVIDERS)}")
    options.compute_units = check_compute_units(options.compute_units)


def check_compute_units(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in COMPUTE_UNITS:
        raise UserError(f"unknown --compute-units {value!r}; choose one of {', '.join(COMPUTE_UNITS)}")
    return value.upper()


def run_cell_in_child(request: CellRequest) -> dict[str, Any]:
    """Measure one cell in a fresh interpreter (``mfdeploy.benchmark.worker``)."""
    return _run_in_child(request.to_dict(), {"target": request.target, "batch": request.batch})


def run_accuracy_in_child(request: AccuracyRequest) -> dict[str, Any]:
    """Score one target on labelled images in a fresh interpreter (``mfdeploy.benchmark.worker``)."""
    return _run_in_child(request.to_dict(), {"target": request.target})


def _run_in_child(request: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mfdeploy-bench-") as tmp:
        request_path, result_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_path.write_text(json.dumps(request))
        proc = subprocess.run(
            [sys.executable, "-m", "mfdeploy.benchmark.worker", str(request_path), str(result_path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0 and result_path.is_file():
            return json.loads(result_path.read_text())
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit code {proc.returncode}"
    return {**base, "status": "failed", "error": f"the measuring process died ({why})"}


def _model_identity(artifact: Artifact, temporary: bool) -> dict[str, Any]:
    model = artifact.manifest.get("model", {})
    return {
        "architecture": model.get("architecture", "Mobile-Former"),
        "size": artifact.size,
        "imgsz": artifact.imgsz,
        "num_classes": artifact.num_classes,
        "params": model.get("params"),
        "madds": model.get("madds"),
        "source": model.get("source"),
        "artifact": str(artifact.root),
        "temporary_artifact": temporary,
        "files": {
            name: {"sha256": entry.get("sha256"), "bytes": entry.get("bytes")}
            for name, entry in sorted(artifact.manifest.get("files", {}).items())
        },
    }


def _cell_warnings(entry: dict[str, Any]) -> list[str]:
    what = f"{entry['target']} batch {entry['batch']}"
    latency = dict(entry["latency_ms"])
    warnings = spread_warnings(Summary(**latency), what)
    if entry.get("caveat"):
        warnings.append(f"{what}: {entry['caveat']}")
    graphs = entry.get("cuda_graphs") or {}
    if graphs.get("fallback"):  # a failed capture, or a backend that ignores --cuda-graphs
        warnings.append(f"{what}: --cuda-graphs not used: {graphs['fallback']}")
    return warnings


def _busy_warning(environment: dict[str, Any]) -> str | None:
    load = environment.get("load_average_at_start")
    cores = environment.get("cpu", {}).get("usable_cores") or environment.get("cpu", {}).get("logical_cores")
    if load and cores and load[0] > BUSY_LOAD_SHARE * cores:
        return (
            f"the machine was busy when the benchmark started (1-minute load average {load[0]:.2f} on {cores} "
            "cores): other processes competed for the CPU, so latencies are likely higher and noisier than "
            "on an idle machine"
        )
    return None


def run_bench(
    options: BenchOptions,
    on_cell: Callable[[str, int, dict[str, Any] | None], None] | None = None,
    labelled: LabelledImages | None = None,
    on_accuracy: Callable[[str, dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Measure every target x batch of ``options`` and return the result document (schema_version 1).

    ``on_cell(target, batch, entry)`` is called before each cell (entry None) and after it. With
    ``options.data``, each target that ran is also scored on that data once the cells are done
    (``on_accuracy(target, entry)`` before and after each); ``labelled`` is that data already loaded for
    the artifact (:func:`load_data`), which is otherwise loaded here, before the first cell.
    """
    check_options(options)
    artifact = Artifact.open(options.artifact)
    if options.data is not None and labelled is None:
        labelled = load_data(artifact, options.data)
    environment = host_environment(options.threads)
    results: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str, str], list[int]] = {}
    warnings: list[str] = []
    busy = _busy_warning(environment)
    if busy:
        warnings.append(busy)
    for target in options.targets:
        target_reason: tuple[str, str] | None = None
        for batch in options.batches:
            if target_reason is not None:  # unavailable for the whole target: say so once, spawn nothing
                skipped[(target, *target_reason)].append(batch)
                continue
            if on_cell:
                on_cell(target, batch, None)
            request = CellRequest(
                artifact=str(Path(options.artifact).resolve()),
                target=target,
                batch=batch,
                plan=options.plan,
                options=options.runner_options(),
                profile=options.profile,
                top=options.top,
            )
            entry = run_cell_in_child(request)
            if on_cell:
                on_cell(target, batch, entry)
            if entry["status"] == "ok":
                entry["warnings"] = _cell_warnings(entry)
                warnings.extend(entry["warnings"])
                results.append(entry)
            elif entry["status"] == "skipped":
                skipped.setdefault((target, "unavailable", entry["reason"]), []).append(batch)
                if not entry.get("batch_specific"):
                    target_reason = ("unavailable", entry["reason"])
            else:
                skipped.setdefault((target, "failed", entry["error"]), []).append(batch)
                warnings.append(f"{target} batch {batch} failed: {entry['error']}")
    accuracy = None
    if options.data is not None and labelled is not None:
        measured = list(dict.fromkeys(entry["target"] for entry in results))
        accuracy = _accuracy(options, artifact, labelled, measured, on_accuracy)
        failed = [a for a in accuracy["results"] if a["status"] == "failed"]
        warnings += [f"{a['target']} accuracy failed: {a['error']}" for a in failed]
    environment["device"] = options.device_name or default_device_name(environment)
    if hasattr(os, "getloadavg"):  # includes this benchmark's own load; for comparison with the start
        environment["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": RESULT_KIND,
        "created": utc_now(),
        "device": environment["device"],
        "command": options.command,
        "model": _model_identity(artifact, options.temporary_artifact),
        "settings": {
            "targets": list(options.targets),
            "batches": list(options.batches),
            **options.plan.to_dict(),
            "threads": options.threads,
            "provider": options.provider,
            "compute_units": options.compute_units,
            "profile": options.profile,
            "top_layers": options.top,
            "isolation": "one fresh process per target and batch",
            **({"data": options.data} if options.data is not None else {}),
            **({"cuda_graphs": True} if options.cuda_graphs else {}),
        },
        "environment": environment,
        "results": results,
        "skipped": [
            {"target": target, "batches": batches, "kind": kind, "reason": reason}
            for (target, kind, reason), batches in skipped.items()
        ],
        "warnings": warnings,
    }
    if accuracy is not None:
        document["accuracy"] = accuracy
    check_result(document, "the result just measured")
    return document


def load_data(artifact: Artifact, spec: str, data: LabelledData | None = None) -> LabelledImages:
    """``spec``'s labelled images for ``artifact``, loaded and matched to its classes as `mfdeploy eval` does
    them; data whose classes the model cannot match is refused in one line. ``data``: ``spec`` already read
    by ``load_labelled``."""
    from mfdeploy.images.labelled import labelled_images

    return labelled_images(artifact, spec, data)


def _accuracy(
    options: BenchOptions,
    artifact: Artifact,
    labelled: LabelledImages,
    targets: list[str],
    on_accuracy: Callable[[str, dict[str, Any] | None], None] | None,
) -> dict[str, Any]:
    """Top-1/top-5 of every measured target on ``labelled``, each in a fresh process: the result's
    "accuracy" block."""
    import numpy as np

    from mfdeploy.images.labelled import ACCURACY_BATCH

    entries = []
    with tempfile.TemporaryDirectory(prefix="mfdeploy-bench-data-") as tmp:
        images, labels = Path(tmp) / "images.npy", Path(tmp) / "labels.npy"
        np.save(images, np.ascontiguousarray(labelled.images, dtype=np.float32))
        np.save(labels, np.asarray(labelled.labels, dtype=np.int64))
        for target in targets:
            if on_accuracy:
                on_accuracy(target, None)
            request = AccuracyRequest(
                artifact=str(Path(options.artifact).resolve()),
                target=target,
                images=str(images),
                labels=str(labels),
                batch=ACCURACY_BATCH,
                options=options.runner_options(),
            )
            entry = run_accuracy_in_child(request)
            entry.pop("traceback", None)
            if on_accuracy:
                on_accuracy(target, entry)
            entries.append(entry)
    return {
        "data": options.data,
        "source": labelled.source,
        "images": int(len(labelled.labels)),
        "skipped_files": labelled.skipped,
        "batch": ACCURACY_BATCH,
        "untrained": artifact.untrained,
        "untrained_note": untrained_note(artifact.untrained),
        "results": entries,
    }


def command_line(argv: list[str] | None = None) -> str:
    """How the benchmark was invoked, for the record (``mfdeploy bench ...``)."""
    args = list(sys.argv if argv is None else argv)
    if args and os.path.basename(args[0]) in ("mfdeploy", "__main__.py"):
        args[0] = "mfdeploy"
    return shlex.join(str(a) for a in args)
