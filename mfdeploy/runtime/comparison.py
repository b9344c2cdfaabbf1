"""Run a reference and candidate targets on the same images and compare their logits.

Export verification, the Core ML check, calibration, parity and eval all ask this one question, so
they share this loop (in the spirit of Polygraphy's ``Comparator.run``): what differs between them is
which runners take part and what they do with the figures, not how the runners are run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mfdeploy.metrics import compare_logits
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.registry import TargetUnavailable, create_runner

if TYPE_CHECKING:
    from mfdeploy.artifacts import Artifact


@dataclass
class TargetRun:
    """One candidate's turn: its logits and how far they are from the reference's, or why it was skipped."""

    target: str  # the target name, or the label of a runner passed in
    runner: Runner | None = None  # still loaded while the caller looks at this result; None if skipped
    logits: np.ndarray | None = None
    figures: dict[str, float | int] | None = None  # mfdeploy.metrics.compare_logits(reference, logits)
    seconds: float = 0.0  # wall time of the candidate's inference on all images
    skipped: str | None = None  # why this target cannot run here


def run_targets(
    reference: Runner | np.ndarray,
    candidates: Iterable[Runner | str],
    images: np.ndarray,
    batch: int,
    *,
    artifact: Artifact | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> Iterator[TargetRun]:
    """Run ``reference`` (or take its logits as given) and then each candidate on ``images`` in batches of
    ``batch``, yielding one :class:`TargetRun` per candidate, in order, while that runner is still loaded
    (so a caller can time it or look inside it before the next one loads).

    A candidate is a runner or a target name; a name is made with ``create_runner(name, artifact,
    **options)`` and a ``TargetUnavailable`` becomes a skipped result with its reason. A runner is loaded
    for its turn and closed after it, unless it was loaded already (then its owner closes it).
    ``announce`` is called with each candidate's name before it runs (a progress bar's status).
    """
    if isinstance(reference, Runner):
        with _loaded(reference):
            reference = reference.infer_all(images, batch)
    for candidate in candidates:
        name = candidate if isinstance(candidate, str) else candidate.label
        if announce is not None:
            announce(name)
        if isinstance(candidate, str):
            if artifact is None:
                raise ValueError(f"target {candidate!r} is a name: run_targets needs the artifact to make its runner")
            try:
                candidate = create_runner(candidate, artifact, **options)
            except TargetUnavailable as exc:
                yield TargetRun(name, skipped=exc.reason)
                continue
        with _loaded(candidate):
            refusal = batch_refusal(candidate, len(images), batch)
            if refusal is not None:  # e.g. a TensorRT engine whose profile does not cover this batch
                yield TargetRun(name, skipped=refusal)
                continue
            started = time.perf_counter()
            logits = candidate.infer_all(images, batch)
            seconds = time.perf_counter() - started
            yield TargetRun(name, candidate, logits, compare_logits(reference, logits), seconds)


def batch_refusal(runner: Runner, count: int, batch: int) -> str | None:
    """Why ``runner`` cannot run ``count`` images in batches of ``batch`` (infer_all's full batches and
    its remainder), or None. A fixed-batch model pads instead, so only a dynamic range can refuse."""
    if runner.inputs()[0].fixed_batch is not None or count == 0:
        return None
    sizes = {min(batch, count)} | ({count % batch} if count > batch and count % batch else set())
    for size in sorted(sizes, reverse=True):
        reason = runner.batch_unsupported_reason(size)
        if reason is not None:
            return reason
    return None


@contextmanager
def _loaded(runner: Runner) -> Iterator[Runner]:
    """``runner`` loaded for the block; closed after it only if it was loaded here."""
    owned = not runner.loaded
    runner.load()
    try:
        yield runner
    finally:
        if owned:
            runner.close()
