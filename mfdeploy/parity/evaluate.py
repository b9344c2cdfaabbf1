"""`mfdeploy eval`: accuracy of every backend on labelled data, and how often it agrees with FP32.

Without --data, the data the model was trained on (its manifest's model.trained_on), else builtin-digits.
builtin-digits evaluates on the digits validation split (the images `mfdeploy train` held out), and so
does the model's own training folder when it is the default; an ImageFolder given with --data is
evaluated whole. Folder class names must be classes the model has (the class names a checkpoint from
`mfdeploy train` carries into the manifest).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mfdeploy.artifacts import Artifact, utc_now
from mfdeploy.console import progress
from mfdeploy.errors import UserError
from mfdeploy.images.choice import DataChoice, choose_data
from mfdeploy.images.datasets import BUILTIN_DIGITS, VALIDATION, LabelledSplit, load_labelled
from mfdeploy.images.files import warn_skipped
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.option_values import check_batch
from mfdeploy.parity.harness import torch_reference
from mfdeploy.parity.options import EVAL_BATCH, EVAL_DATA, EVAL_TARGETS
from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.registry import TARGETS, parse_targets
from mfdeploy.thresholds import untrained_note

SCHEMA_VERSION = 1


def _decoded(split: LabelledSplit, pre: Preprocessing, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The split's images preprocessed, and their labels; an image that fails to decode is left out and
    its reason appended to ``skipped`` (the folder scan only read headers)."""
    arrays, kept = [], []
    with progress() as bar:
        task = bar.add_task("load labelled images", total=len(split), status="")
        for i in range(len(split)):
            try:
                arrays.append(pre(split.image(i)))
                kept.append(i)
            except UserError as exc:
                skipped.append(str(exc))
            bar.update(task, advance=1)
    if not arrays:
        return np.zeros((0, 3, pre.imgsz, pre.imgsz), np.float32), split.labels[:0]
    return np.stack(arrays), split.labels[kept]


def _labelled_images(artifact: Artifact, choice: DataChoice) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Preprocessed images, model-class labels, and the data section of the report (name, split, how many
    files were skipped, where the choice came from)."""
    spec = choice.spec
    data = load_labelled(spec)
    split, split_name = data.val, VALIDATION
    # a user's evaluation folder: every image counts; the model's own training folder: the images it held out
    if spec != BUILTIN_DIGITS and not choice.from_training:
        split, split_name = (
            LabelledSplit(data.train.sources + data.val.sources, np.concatenate([data.train.labels, data.val.labels])),
            None,
        )
    classes = artifact.manifest["model"].get("classes")
    if classes is None:
        # without class names, folder "3" can only mean output 3, and that means something only for a data
        # set with exactly the model's classes: 10 digit folders against 1000 outputs scored 0.00% everywhere
        if len(data.classes) != artifact.num_classes or any(not c.isdigit() for c in data.classes):
            raise UserError(
                f"{spec} has {len(data.classes)} classes and the model in {artifact.root} has "
                f"{artifact.num_classes} outputs without class names, so its classes cannot be matched; "
                "evaluate on data with the model's classes, or a model trained with `mfdeploy train` on this data "
                "(its checkpoint carries the class names)"
            )
        classes = [str(i) for i in range(artifact.num_classes)]
    unknown = [c for c in data.classes if c not in classes]
    if unknown:
        raise UserError(
            f"{spec} has classes the model does not have: {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            + f" (the model's classes: {', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})"
        )
    to_model = np.array([classes.index(c) for c in data.classes])
    undecodable: list[str] = []
    images, labels = _decoded(split, artifact.preprocessing, undecodable)
    warn_skipped(undecodable, spec, "undecodable")
    skipped = len(data.skipped) + len(undecodable)
    if len(images) == 0:
        first = (data.skipped + undecodable)[0]
        raise UserError(f"no image in {spec} could be read: {skipped} file(s) skipped; first: {first}")
    section = {"source": data.name, "images": int(len(labels)), "skipped_files": skipped}
    if split_name is not None:
        section["split"] = split_name
    return images, to_model[labels], section | choice.describe()


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    ranked = np.argsort(-logits, axis=1)
    top1 = float(np.mean(ranked[:, 0] == labels))
    top5 = float(np.mean([label in row[:5] for label, row in zip(labels, ranked)]))
    return top1, top5


def run_eval(
    artifact: Artifact,
    data: str | None = None,
    targets: list[str] | str = EVAL_TARGETS,
    batch: int = EVAL_BATCH,
    provider: str | None = None,
) -> dict[str, Any]:
    names = parse_targets(targets)
    check_batch(batch)
    started = time.perf_counter()
    images, labels, section = _labelled_images(artifact, choose_data(data, artifact.trained_on, EVAL_DATA))
    with torch_reference(artifact) as reference:
        reference_logits = reference.infer_all(images, batch)
    reference_top1 = reference_logits.argmax(1)
    fp32_top1, fp32_top5 = _accuracy(reference_logits, labels)
    rows: list[dict[str, Any]] = [
        {
            "target": "torch",
            "backend": "torch",
            "precision": "fp32",
            "status": "ok",
            "top1": fp32_top1,
            "top5": fp32_top5,
            "agreement_with_fp32": 1.0,
            "delta_top1_points": 0.0,
        }
    ]
    candidates = [name for name in names if name != "torch"]
    for run in run_targets(reference_logits, candidates, images, batch, artifact=artifact, provider=provider):
        spec = TARGETS[run.target]
        row: dict[str, Any] = {"target": run.target, "backend": spec.backend, "precision": spec.precision}
        if run.skipped is not None:
            rows.append(row | {"status": "skipped", "reason": run.skipped})
            continue
        top1, top5 = _accuracy(run.logits, labels)
        row.update(
            status="ok",
            label=run.runner.label,
            precision=run.runner.precision,
            top1=top1,
            top5=top5,
            agreement_with_fp32=float(np.mean(run.logits.argmax(1) == reference_top1)),
            delta_top1_points=round((top1 - fp32_top1) * 100, 3),
        )
        rows.append(row)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": utc_now(),
        "artifact": str(artifact.root),
        "data": section,
        "untrained": artifact.untrained,
        "untrained_note": untrained_note(artifact.untrained),
        "results": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
