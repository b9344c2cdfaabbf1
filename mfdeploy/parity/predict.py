"""`mfdeploy predict`: one's own images through an artifact's targets, the top labels each gives, and
whether the targets agree with the reference.

Targets are opened through the runtime registry and run by :func:`run_targets`, as parity runs them, so a
target that cannot run here is skipped with the same reason (a missing file names the command that makes
it). Nothing is exported or calibrated here: the default targets are PyTorch, the FP32 graph and whatever
else the artifact already holds.

JSON (``schema_version`` 1), top level: schema_version, created, artifact, model {size, num_classes, imgsz},
class_names (whether labels are the manifest's class names; else they are class indices as text), top,
reference (the target the others are compared with: torch, or the first target that runs), targets
[{target, backend, precision, status "ok", label} or {target, backend, precision, status "skipped",
reason}], images [{path, predictions {target: [{label, index, probability}], best first}, agreement
{target: {top1_agrees, top_k_overlap}}}], agreement {reference, all_top1_agree, targets {target: {images,
top1_agreeing, top1_agreement, mean_top_k_overlap}}}, data {images, skipped_files}, untrained,
untrained_note, seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table
from rich.text import Text

from mfdeploy.artifacts import Artifact, utc_now
from mfdeploy.console import progress
from mfdeploy.errors import UserError
from mfdeploy.images.files import scan_files, warn_skipped
from mfdeploy.images.preprocess import IMAGE_EXTENSIONS, is_image_file, load_image
from mfdeploy.images.sets import to_channels
from mfdeploy.option_values import check_batch, check_int, check_threads
from mfdeploy.parity.options import PREDICT_ALWAYS, PredictOptions
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.registry import TARGETS, TargetUnavailable, create_runner, parse_targets
from mfdeploy.thresholds import untrained_note

SCHEMA_VERSION = 1


def default_targets(artifact: Artifact) -> list[str]:
    """torch and onnx, plus every other target whose file the artifact already lists (registry order)."""
    return [name for name, spec in TARGETS.items() if name in PREDICT_ALWAYS or artifact.has(spec.file)]


@dataclass
class PredictImages:
    paths: list[Path]  # the images read, in the order given (a folder's sorted)
    arrays: np.ndarray  # float32 [N, C, H, W], preprocessed as the manifest says
    skipped: list[str] = field(default_factory=list)  # why each unreadable file was left out


def _listed(specs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """The files the arguments name: a file as given, a folder as its images (searched recursively, as
    calibration and parity list a folder); a path that does not exist is an error, not a skip."""
    files: list[Path] = []
    skipped: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            scan = scan_files(path, is_image_file, "image")
            if not scan.files and not scan.skipped:
                raise UserError(
                    f"image folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
                )
            files += scan.files
            skipped += scan.skipped
        elif path.exists() or path.is_symlink():  # a dangling link is an unreadable file, said so when read
            files.append(path)
        else:
            raise UserError(f"image {path} does not exist")
    return list(dict.fromkeys(files)), skipped


def load_images(specs: Sequence[str | os.PathLike[str]], artifact: Artifact) -> PredictImages:
    """The images (files and folders) decoded and preprocessed for ``artifact``: EXIF orientation,
    grey/RGBA/palette to RGB, resize and crop, the manifest's mean and std. An unreadable file is skipped
    and counted; none readable is an error."""
    if not specs:
        raise UserError("no image given; pass image files or folders of images")
    files, skipped = _listed(specs)
    pre = artifact.preprocessing
    arrays, kept = [], []
    for path in files:
        try:
            arrays.append(pre(load_image(path)))
        except UserError as exc:
            skipped.append(str(exc))
            continue
        kept.append(path)
    if not arrays:
        if len(skipped) == 1:
            raise UserError(skipped[0])
        raise UserError(f"none of the {len(skipped)} image files could be read; first: {skipped[0]}")
    warn_skipped(skipped, specs[0] if len(specs) == 1 else "the images given")
    return PredictImages(kept, to_channels(np.stack(arrays), artifact.in_chans), skipped)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of each row of logits (float64, shifted by the row's maximum)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_labels(logits: np.ndarray, k: int, classes: list[str] | None) -> list[list[dict[str, Any]]]:
    """Per image, the ``k`` most probable classes, best first: {label, index, probability}."""
    probabilities = softmax(logits)
    rows = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        rows.append(
            [
                {"label": classes[i] if classes else str(int(i)), "index": int(i), "probability": float(row[i])}
                for i in best
            ]
        )
    return rows


def _reference(names: list[str], artifact: Artifact, options: dict[str, Any]) -> tuple[Runner, list[tuple[str, str]]]:
    """The first of ``names`` that runs here, and (name, reason) for those before it that cannot."""
    skipped = []
    for name in names:
        try:
            return create_runner(name, artifact, **options), skipped
        except TargetUnavailable as exc:
            skipped.append((name, exc.reason))
    reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped)
    raise UserError(f"none of the targets can run here ({reasons})")


def _target_row(name: str) -> dict[str, Any]:
    spec = TARGETS[name]
    return {"target": name, "backend": spec.backend, "precision": spec.precision}


def run_predict(
    artifact: Artifact, images: Sequence[str | os.PathLike[str]], options: PredictOptions | None = None
) -> dict[str, Any]:
    """Every requested target's top labels for each image, and its agreement with the reference (the
    report dict; see the module docstring)."""
    options = options or PredictOptions()
    names = parse_targets(options.targets) if options.targets is not None else default_targets(artifact)
    check_int(options.top, "--top", 1, max(artifact.num_classes, PredictOptions.top))
    check_threads(options.threads)
    check_batch(options.batch)
    if options.provider is not None and any(TARGETS[n].backend == "onnxruntime" for n in names):
        from mfdeploy.runtime.onnxruntime_runner import check_provider

        check_provider(options.provider)
    k = min(options.top, artifact.num_classes)
    classes = artifact.manifest["model"].get("classes") or None
    started = time.perf_counter()
    loaded = load_images(images, artifact)
    given = {"provider": options.provider, "threads": options.threads}
    runner_options = {key: value for key, value in given.items() if value is not None}  # only what the user set

    # torch is the reference when asked for; else (or when it cannot run) the first target that runs
    order = sorted(names, key=lambda name: name != "torch")
    reference_runner, unavailable = _reference(order, artifact, runner_options)
    reference = order[len(unavailable)]
    rows: dict[str, dict[str, Any]] = {
        name: _target_row(name) | {"status": "skipped", "reason": reason} for name, reason in unavailable
    }
    predictions: dict[str, list[list[dict[str, Any]]]] = {}
    with progress() as bar:
        task = bar.add_task("predict", total=len(order) - len(unavailable), status=reference)
        with reference_runner:
            reference_logits = reference_runner.infer_all(loaded.arrays, options.batch)
            rows[reference] = _target_row(reference) | {"status": "ok", "label": reference_runner.label}
        predictions[reference] = top_labels(reference_logits, k, classes)
        bar.update(task, advance=1)
        candidates = order[len(unavailable) + 1 :]
        runs = run_targets(
            reference_logits,
            candidates,
            loaded.arrays,
            options.batch,
            artifact=artifact,
            announce=lambda name: bar.update(task, status=name),
            **runner_options,
        )
        for run in runs:
            if run.skipped is not None:
                rows[run.target] = _target_row(run.target) | {"status": "skipped", "reason": run.skipped}
            else:
                rows[run.target] = _target_row(run.target) | {"status": "ok", "label": run.runner.label}
                predictions[run.target] = top_labels(run.logits, k, classes)
            bar.update(task, advance=1)

    ran = [name for name in order if name in predictions]
    per_image = []
    for i, path in enumerate(loaded.paths):
        best = {name: predictions[name][i] for name in ran}
        reference_top = {p["index"] for p in best[reference]}
        agreement = {
            name: {
                "top1_agrees": best[name][0]["index"] == best[reference][0]["index"],
                "top_k_overlap": len(reference_top & {p["index"] for p in best[name]}) / k,
            }
            for name in ran
            if name != reference
        }
        per_image.append({"path": str(path), "predictions": best, "agreement": agreement})
    summary = {}
    for name in ran[1:]:
        agreeing = sum(image["agreement"][name]["top1_agrees"] for image in per_image)
        overlaps = [image["agreement"][name]["top_k_overlap"] for image in per_image]
        summary[name] = {
            "images": len(per_image),
            "top1_agreeing": agreeing,
            "top1_agreement": agreeing / len(per_image),
            "mean_top_k_overlap": float(np.mean(overlaps)),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "created": utc_now(),
        "artifact": str(artifact.root),
        "model": {key: artifact.manifest["model"].get(key) for key in ("size", "num_classes", "imgsz")},
        "class_names": classes is not None,
        "top": k,
        "reference": reference,
        "targets": [rows[name] for name in order],
        "images": per_image,
        "agreement": {
            "reference": reference,
            "all_top1_agree": all(s["top1_agreeing"] == s["images"] for s in summary.values()),
            "targets": summary,
        },
        "data": {"images": len(per_image), "skipped_files": len(loaded.skipped)},
        "untrained": artifact.untrained,
        "untrained_note": untrained_note(artifact.untrained, labels=True),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _percent(probability: float) -> str:
    return f"{probability:.2%}"


def _agreement_line(report: dict[str, Any]) -> str:
    agreement = report["agreement"]
    if not agreement["targets"]:
        return f"agreement: only {report['reference']} ran, nothing to compare with"
    k = report["top"]
    parts = [
        f"{name} top-1 {s['top1_agreeing']}/{s['images']}, top-{k} overlap {s['mean_top_k_overlap']:.0%}"
        for name, s in agreement["targets"].items()
    ]
    verdict = "every target gives its top-1 on every image" if agreement["all_top1_agree"] else "top-1 differs"
    return f"agreement with {agreement['reference']}: {'; '.join(parts)} ({verdict})"


def terminal_output(report: dict[str, Any]) -> list[str | Table]:
    """The human summary: a header, skipped targets, one table per image (rank, then each target's label
    and probability) and the agreement line. Labels are Text, so a class name is never read as markup."""
    model, data = report["model"], report["data"]
    labels = "class names" if report["class_names"] else "no class names in the manifest: labels are class indices"
    skipped = f", {data['skipped_files']} unreadable files skipped" if data["skipped_files"] else ""
    images = f"{data['images']} image{'' if data['images'] == 1 else 's'}"
    lines: list[str | Table] = [
        f"predict with {report['artifact']} (Mobile-Former {model['size']}, {model['num_classes']} classes, "
        f"{labels}) on {images}{skipped}; top {report['top']}, reference {report['reference']}:"
    ]
    for row in report["targets"]:
        if row["status"] == "skipped":
            lines.append(f"  {row['target']:<10} skipped: {row['reason']}")
    for image in report["images"]:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("#", justify="right")
        for name in image["predictions"]:
            table.add_column(name)
        for rank in range(report["top"]):
            cells = [
                Text(f"{p[rank]['label']}  {_percent(p[rank]['probability'])}") for p in image["predictions"].values()
            ]
            table.add_row(str(rank + 1), *cells)
        differs = [name for name, a in image["agreement"].items() if not a["top1_agrees"]]
        lines.append("")
        lines.append(
            image["path"] + (f"  (top-1 differs from {report['reference']}: {', '.join(differs)})" if differs else "")
        )
        lines.append(table)
    lines += ["", _agreement_line(report)]
    if report["untrained_note"]:
        lines.append(f"note: {report['untrained_note']}")
    return lines
