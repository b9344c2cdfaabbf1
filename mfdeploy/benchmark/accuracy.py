"""`bench --data`: top-1/top-5 accuracy of one target on labelled images, in a fresh process like a cell.

The parent loads the data once (:func:`mfdeploy.images.labelled.labelled_images`, as `mfdeploy eval` does,
with its refusal of classes the model cannot match) and hands the preprocessed images and labels over as
.npy files; each target is then scored once, whatever the batch sizes timed, with eval's batch and
scoring (:func:`mfdeploy.metrics.topk_accuracy`), after every latency cell, so the accuracy pass never
competes with a timed one. The runner is made with the same options as the cells (threads, provider,
compute units), so the figure belongs to the configuration whose latency the table shows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mfdeploy.artifacts import Artifact
from mfdeploy.benchmark.cell import CannotRun, RunnerFactory, failed_entry, load_runner, resolve_runner
from mfdeploy.errors import UserError
from mfdeploy.images.labelled import ACCURACY_BATCH
from mfdeploy.metrics import topk_accuracy

ACCURACY_KIND = "accuracy"  # how the worker tells an accuracy request from a cell request


@dataclass
class AccuracyRequest:
    artifact: str
    target: str
    images: str  # .npy of preprocessed images, NCHW float32
    labels: str  # .npy of each image's model output index
    batch: int = ACCURACY_BATCH
    options: dict[str, Any] = field(default_factory=dict)  # the runner options the cells ran with
    kind: str = ACCURACY_KIND

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AccuracyRequest":
        return cls(**data)


def measure_accuracy(request: AccuracyRequest, factory: RunnerFactory = resolve_runner) -> dict[str, Any]:
    """Score one target; an entry with status "ok" (top1, top5, images), "skipped" (reason) or "failed"."""
    base = {"target": request.target}
    try:
        artifact = Artifact.open(request.artifact)
    except UserError as exc:
        return {**base, "status": "skipped", "reason": exc.message}
    try:
        images = np.load(request.images, mmap_mode="c")  # writable (torch wants it), never written back
        labels = np.load(request.labels)
        started = time.perf_counter()
        try:
            runner = load_runner(factory, request.target, artifact, request.options)
        except CannotRun as exc:
            return {**base, "status": "skipped", "reason": exc.reason}
        try:
            logits = runner.infer_all(images, request.batch)
        finally:
            runner.close()
        top1, top5 = topk_accuracy(logits, labels)
        return {
            **base,
            "status": "ok",
            "top1": top1,
            "top5": top5,
            "images": int(len(labels)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    except Exception as exc:  # noqa: BLE001 - a backend failing on this host is a result, not a crash
        return failed_entry(base, exc)
