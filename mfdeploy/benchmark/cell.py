"""One target at one batch size, measured in this process: load, warm up, time, read memory, profile.

This is the unit ``bench`` runs in a fresh child process per cell (``worker``). It talks to backends
only through the registry and the runner interface, so targets that land later (fp16/int8 graphs,
TensorRT engines, Core ML) are measured unchanged, and any target that cannot run here comes back as
skipped with its reason.
"""

from __future__ import annotations

import importlib
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mfdeploy.artifacts import Artifact
from mfdeploy.benchmark.memory import gpu_device_used_bytes, gpu_memory, peak_rss_bytes
from mfdeploy.benchmark.noop import NOOP_TARGET, NoopRunner
from mfdeploy.benchmark.stages import summarize_profile
from mfdeploy.benchmark.stats import summarize
from mfdeploy.errors import UserError
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.registry import TARGETS, TargetUnavailable, create_runner
from mfdeploy.runtime.timing import TimingPlan, make_images, time_calls, warm_up

# Python modules of each registry backend, imported before the clock starts (see _import_backend).
BACKEND_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "coreml": "coremltools"}
PROFILE_RUNS = 50  # profiled runs per cell: enough for a stable median per layer, small enough for the trace
MB = 2**20


@dataclass
class CellRequest:
    artifact: str
    target: str
    batch: int
    plan: TimingPlan = field(default_factory=TimingPlan)
    options: dict[str, Any] = field(default_factory=dict)  # runner options the user set: threads, provider...
    profile: bool = False
    top: int = 10
    fresh_process: bool = False  # set by the worker: memory figures then belong to this cell alone

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "target": self.target,
            "batch": self.batch,
            "plan": self.plan.to_dict(),
            "options": self.options,
            "profile": self.profile,
            "top": self.top,
            "fresh_process": self.fresh_process,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellRequest":
        plan = TimingPlan(**data["plan"])
        return cls(**{**data, "plan": plan})


def resolve_runner(target: str, artifact: Artifact, **options: Any) -> Runner:
    """The registry's runner for ``target``, or the benchmark's own no-op runner."""
    if target == NOOP_TARGET:
        return NoopRunner.from_artifact(artifact)
    return create_runner(target, artifact, **options)


def _import_backend(target: str) -> float:
    """Import the target's runner module and backend library ahead of timing, so that first-load time is
    session/engine creation and not a library import (which a server pays once), and so that the memory
    "added" by the runner excludes the library. Returns the import time in ms; an import that fails is
    left for ``create_runner`` to turn into a skip reason."""
    spec = TARGETS.get(target)
    if spec is None:
        return 0.0
    start = time.perf_counter()
    for module in (BACKEND_MODULES.get(spec.backend), spec.runner.split(":")[0]):
        if module:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - missing or broken backends are reported by create_runner
                pass
    return (time.perf_counter() - start) * 1e3


def _file_entry(artifact: Artifact, target: str) -> dict[str, Any] | None:
    spec = TARGETS.get(target)
    if spec is None:
        return None
    entry = artifact.manifest.get("files", {}).get(spec.file)
    if entry is not None:
        return {"name": spec.file, "bytes": int(entry["bytes"]), "sha256": entry.get("sha256")}
    path = artifact.path(spec.file)
    if path.is_file():
        return {"name": spec.file, "bytes": path.stat().st_size, "sha256": None}
    if path.is_dir():
        return {
            "name": spec.file,
            "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
            "sha256": None,
        }
    return None


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 1)


RunnerFactory = Callable[..., Runner]  # (target, artifact, **options) -> Runner, like resolve_runner


class CannotRun(Exception):
    """A target that cannot run on this host: a result ("skipped", with the reason), not a failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_runner(factory: RunnerFactory, target: str, artifact: Artifact, options: dict[str, Any]) -> Runner:
    """``target``'s runner made by ``factory`` and loaded, or :class:`CannotRun` with the reason."""
    runner: Runner | None = None
    try:
        runner = factory(target, artifact, **options)
        runner.load()
        return runner
    except TargetUnavailable as exc:
        reason = exc.reason
    except UserError as exc:  # e.g. the provider is not in this onnxruntime build, a changed file
        reason = exc.message
    except (ImportError, OSError) as exc:  # a backend whose native libraries do not load on this host
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"{target} cannot be loaded here: {first}"
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    if runner is not None:
        runner.close()
    raise CannotRun(reason)


def measure_cell(request: CellRequest, factory: RunnerFactory = resolve_runner) -> dict[str, Any]:
    """Measure one cell; returns a result entry with status "ok", "skipped" (reason) or "failed" (error).

    ``factory`` makes the runner; only tests pass another one (a runner for a backend this host lacks,
    to check how its hooks are consumed).
    """
    base = {"target": request.target, "batch": request.batch}
    try:
        artifact = Artifact.open(request.artifact)
    except UserError as exc:
        return {**base, "status": "skipped", "reason": exc.message}
    import_ms = _import_backend(request.target)
    rss_before = peak_rss_bytes()
    gpu_before = gpu_device_used_bytes()
    runner: Runner | None = None
    try:
        start = time.perf_counter()
        try:
            runner = load_runner(factory, request.target, artifact, request.options)
        except CannotRun as exc:
            return {**base, "status": "skipped", "reason": exc.reason}
        first_load_ms = (time.perf_counter() - start) * 1e3
        spec = runner.inputs()[0]
        if spec.fixed_batch is not None and spec.fixed_batch != request.batch:
            reason = f"the model has a fixed batch of {spec.fixed_batch}"
            return {**base, "status": "skipped", "reason": reason, "batch_specific": True}
        refusal = runner.batch_unsupported_reason(request.batch)  # outside a TensorRT profile's range
        if refusal is not None:
            return {**base, "status": "skipped", "reason": refusal, "batch_specific": True}
        dims = [d if isinstance(d, int) else None for d in spec.shape[1:]]
        channels = dims[0] or artifact.in_chans
        height = dims[1] or artifact.imgsz
        width = dims[2] or artifact.imgsz
        images = make_images(request.batch, channels, height, width)

        start = time.perf_counter()
        runner.run(images)
        first_inference_ms = (time.perf_counter() - start) * 1e3
        warm_up(runner.run, images, request.plan.warmup)
        runner.pop_device_timings()
        samples = time_calls(runner.run, images, request.plan)
        device_timings = runner.pop_device_timings()
        rss_after = peak_rss_bytes()
        gpu = gpu_memory(gpu_before)
        entry = _ok_entry(request, artifact, runner, samples, device_timings)
        if request.options.get("cuda_graphs"):
            entry["cuda_graphs"] = runner.cuda_graphs_state() or {
                "requested": True,
                "used": False,
                "fallback": f"{runner.backend} ignores --cuda-graphs: only TensorRT targets capture CUDA graphs",
            }
        entry.update(
            first_load_ms=round(first_load_ms, 3),
            first_inference_ms=round(first_inference_ms, 3),
            library_import_ms=round(import_ms, 1),
            memory={
                "rss_peak_mb": _mb(rss_after),
                "rss_before_runner_mb": _mb(rss_before),
                "rss_increase_mb": _mb(rss_after - rss_before) if rss_after is not None and rss_before else None,
                "gpu": gpu.to_dict() if gpu else None,
                "isolation": "process" if request.fresh_process else "shared",
            },
        )
        has_profiler = type(runner).profile_layers is not Runner.profile_layers
        backend = runner.backend
        runner.close()
        runner = None
        if request.profile:
            if has_profiler:
                entry["profile"] = _profile_or_failure(request, artifact, images, factory, backend)
            else:
                entry["profile"] = {"available": False, "note": f"{backend} has no per-layer profiler in mfdeploy"}
        return entry
    except Exception as exc:  # noqa: BLE001 - a backend failing on this host is a result, not a crash
        return failed_entry(base, exc)
    finally:
        if runner is not None:
            runner.close()


def _ok_entry(request, artifact, runner, samples, device_timings) -> dict[str, Any]:
    summary = summarize(samples)
    madds = artifact.manifest.get("model", {}).get("madds")
    seconds = summary.mean / 1e3
    entry: dict[str, Any] = {
        "target": request.target,
        "batch": request.batch,
        "status": "ok",
        "backend": runner.backend,
        "precision": runner.precision,
        "label": runner.label,
        "caveat": runner.benchmark_caveat,
        "options": dict(request.options),
        "timing": request.plan.to_dict(),
        "latency_ms": summary.to_dict(),
        "throughput_ips": round(request.batch / seconds, 2) if seconds > 0 else None,
        # 4 significant figures: a slow device (0.37 GMAC/s) keeps the precision a fast one has
        "gmacs": float(f"{madds * request.batch / seconds / 1e9:.4g}") if madds and seconds > 0 else None,
        "model_file": _file_entry(artifact, request.target),
        "device_timings_ms": {name: summarize(values).to_dict() for name, values in device_timings.items() if values},
        "samples_ms": [round(s, 6) for s in samples],
        "profile": None,
    }
    if not all(math.isfinite(v) for v in (summary.mean, summary.p99)):
        raise ValueError("non-finite latency")
    return entry


def _profile_or_failure(request: CellRequest, artifact: Artifact, images, factory, backend: str) -> dict[str, Any]:
    """The profile, or why there is none: profiling runs after the latency is measured, so a profiler
    that cannot run here (UserError: e.g. Core ML compute plans before macOS 14.4) or fails is reported
    in the cell's profile entry and the measured latency stays."""
    try:
        return _profile(request, artifact, images, factory)
    except UserError as exc:
        return {"available": False, "note": f"{backend} profile unavailable: {exc.message}"}
    except Exception as exc:  # noqa: BLE001 - a profiler failing on this host is a result, not a failed cell
        error = failed_entry({}, exc)["error"]
        return {"available": False, "failed": True, "error": error, "note": f"{backend} profile failed: {error}"}


def _profile(request: CellRequest, artifact: Artifact, images, factory: RunnerFactory) -> dict[str, Any]:
    """Per-layer profile on a separate runner made with profile=True, so profiling overhead never enters
    the latency figures above."""
    runner = factory(request.target, artifact, **{**request.options, "profile": True})
    try:
        runner.load()
        runs = max(10, min(PROFILE_RUNS, request.plan.runs or PROFILE_RUNS))
        for _ in range(runs):
            runner.run(images)
        records = runner.profile_layers()
    finally:
        runner.close()
    if records is None:
        return {"available": False, "note": f"{runner.backend} has no per-layer profiler in mfdeploy", "runs": runs}
    if not records:
        return {"available": False, "note": f"{runner.backend}'s profiler reported no layers", "runs": runs}
    return {"available": True, "source": runner.label, "runs": runs, **summarize_profile(records, request.top)}


def failed_entry(base: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """A measurement that raised, as a result row: the error's first line and a short traceback."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {
        **base,
        "status": "failed",
        "error": f"{type(exc).__name__}: {message}".rstrip(": "),
        "traceback": traceback.format_exc(limit=8),
    }
