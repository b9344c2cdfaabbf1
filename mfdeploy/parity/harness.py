"""`mfdeploy parity`: every backend against PyTorch on the same images, with verdicts, and for ONNX
graphs the stage where a backend first parts from PyTorch.

The harness only talks to runners from the registry, so a new backend is one runner there, not a change
here. A backend that cannot run on this host is reported as skipped with the reason.
"""

from __future__ import annotations

import time
from typing import Any

from mfdeploy.artifacts import ONNX_FILE, Artifact, utc_now
from mfdeploy.console import err, progress
from mfdeploy.environment import library_versions
from mfdeploy.errors import UserError
from mfdeploy.images.choice import choose_data
from mfdeploy.images.datasets import VALIDATION
from mfdeploy.images.sets import ImageSet, load_image_set
from mfdeploy.parity.options import PARITY_DATA, ParityOptions, check_options
from mfdeploy.parity.stages import map_stages, stage_errors, torch_stage_outputs
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.registry import TARGETS, TargetUnavailable, create_runner
from mfdeploy.thresholds import DEFAULT_THRESHOLDS, judge, thresholds_for, untrained_note

SCHEMA_VERSION = 1
STAGE_BATCH = 4  # images used for the stage-by-stage comparison
LOCALIZABLE_BACKENDS = ("onnxruntime",)
MODEL_FIELDS = ("size", "num_classes", "imgsz", "source", "trained_on")  # the report's model section


def _first_parting(errors: dict[str, float], stages: list[str], limit: float) -> dict[str, Any] | None:
    ordered = [s for s in stages if s in errors]
    for i, stage in enumerate(ordered):
        if errors[stage] > limit:
            return {
                "stage": stage,
                "rel_error": errors[stage],
                "limit": limit,
                "growth": [{"stage": s, "rel_error": errors[s]} for s in ordered[i:]],
            }
    return None


def torch_reference(artifact: Artifact) -> Runner:
    """PyTorch, the reference every comparison needs: unlike a candidate backend it cannot be skipped, so an
    artifact without its weights is the user's to fix (one line), not a traceback."""
    try:
        return create_runner("torch", artifact)
    except TargetUnavailable as exc:
        raise UserError(f"cannot compare with PyTorch, the reference: {exc}") from None


def run_parity(artifact: Artifact, options: ParityOptions) -> dict[str, Any]:
    """Compare every requested target with PyTorch; the report dict (see docs in parity.report)."""
    targets = check_options(options)
    started = time.perf_counter()
    in_chans = artifact.in_chans
    reference_runner = torch_reference(artifact)
    choice = choose_data(options.data, artifact.trained_on, PARITY_DATA)
    # builtin-digits: its validation split, images neither training nor calibration saw
    images: ImageSet = load_image_set(
        choice.spec, artifact.preprocessing, options.n, in_chans, resize_arrays=True, split=VALIDATION
    )
    data = images.images[: options.n]

    stage_images = data[:STAGE_BATCH]
    stages, stage_reference = torch_stage_outputs(reference_runner.model, stage_images)
    stage_names = [s.name for s in stages]
    mapping: dict[str, str] | None = None

    results: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("parity", total=len(targets), status="")
        runs = run_targets(
            reference_runner,
            targets,
            data,
            options.batch,
            artifact=artifact,
            announce=lambda name: bar.update(task, status=name),
            provider=options.provider,
        )
        for run in runs:
            spec = TARGETS[run.target]
            entry: dict[str, Any] = {"target": run.target, "backend": spec.backend, "precision": spec.precision}
            if run.skipped is not None:
                entry.update(status="skipped", reason=run.skipped)
                results.append(entry)
                bar.update(task, advance=1)
                continue
            runner = run.runner
            limits = thresholds_for(runner.precision, options.overrides, artifact.untrained)
            failures = judge(run.figures, limits)
            entry.update(
                label=runner.label,
                precision=runner.precision,
                thresholds=limits.to_dict(),
                figures=run.figures,
                seconds=round(run.seconds, 3),
                status="passed" if not failures else "failed",
                failures=[f.to_dict() for f in failures],
            )
            localizable = spec.backend in LOCALIZABLE_BACKENDS
            if (failures or options.layers) and localizable:
                if mapping is None:
                    mapping = map_stages(artifact.path(ONNX_FILE), stages, stage_reference, stage_images)
                errors = stage_errors(runner.path, mapping, stage_reference, stage_images, options.provider)
                entry["stages"] = {
                    "rel_error": {s: errors[s] for s in stage_names if s in errors},
                    "limit": limits.stage_rel_error,
                    "first_parting": _first_parting(errors, stage_names, limits.stage_rel_error),
                }
            elif failures or options.layers:
                entry["stages"] = {"unavailable": f"stage outputs are only exposed for ONNX graphs, not {spec.backend}"}
            results.append(entry)
            bar.update(task, advance=1)

    failed = [r["target"] for r in results if r["status"] == "failed"]
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": utc_now(),
        "artifact": str(artifact.root),
        "model": {k: artifact.manifest["model"].get(k) for k in MODEL_FIELDS},
        "data": images.describe() | {"used": int(len(data))} | choice.describe(),
        "batch": options.batch,
        "reference": "torch (PyTorch eager, FP32, CPU)",
        "untrained": artifact.untrained,
        "untrained_note": untrained_note(artifact.untrained),
        "default_thresholds": {
            p: thresholds_for(p, untrained=artifact.untrained).to_dict() for p in DEFAULT_THRESHOLDS
        },
        "overrides": {k: v for k, v in options.overrides.items() if v is not None},
        "stage_comparison": (
            f"stage outputs compared on {len(stage_images)} images; only the stage outputs are exposed as extra "
            "graph outputs, because marking every tensor as an output changes what a backend fuses"
        ),
        "stage_mapping": mapping,
        "results": results,
        "passed": not failed,
        "failed_targets": failed,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": library_versions(),
    }
    if failed:
        err.print(f"parity failed for {', '.join(failed)}", markup=False)
    return report
