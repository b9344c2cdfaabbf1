"""`mfdeploy eval`: accuracy of every backend on labelled data, and how often it agrees with FP32.

Without --data, the data the model was trained on (its manifest's model.trained_on), else builtin-digits.
builtin-digits evaluates on the digits validation split (the images `mfdeploy train` held out), and so
does the model's own training folder when it is the default; an ImageFolder given with --data is
evaluated whole. Loading the data (and refusing classes the model cannot match) is
:func:`mfdeploy.images.labelled.labelled_images` and scoring :func:`mfdeploy.metrics.topk_accuracy`, which
`mfdeploy bench --data` uses too.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mfdeploy.artifacts import Artifact, utc_now
from mfdeploy.images.choice import choose_data
from mfdeploy.images.labelled import labelled_images
from mfdeploy.metrics import topk_accuracy
from mfdeploy.option_values import check_batch
from mfdeploy.parity.harness import torch_reference
from mfdeploy.parity.options import EVAL_BATCH, EVAL_DATA, EVAL_TARGETS
from mfdeploy.runtime.comparison import run_targets
from mfdeploy.runtime.registry import TARGETS, parse_targets
from mfdeploy.thresholds import untrained_note

SCHEMA_VERSION = 1


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
    choice = choose_data(data, artifact.trained_on, EVAL_DATA)
    labelled = labelled_images(artifact, choice.spec, held_out_only=choice.from_training)
    images, labels = labelled.images, labelled.labels
    with torch_reference(artifact) as reference:
        reference_logits = reference.infer_all(images, batch)
    reference_top1 = reference_logits.argmax(1)
    fp32_top1, fp32_top5 = topk_accuracy(reference_logits, labels)
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
        top1, top5 = topk_accuracy(run.logits, labels)
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
        "data": labelled.section() | choice.describe(),
        "untrained": artifact.untrained,
        "untrained_note": untrained_note(artifact.untrained),
        "results": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
