"""Every export is verified before it is kept: the exported model against PyTorch, on real photographs
and on random inputs, at batch 1 and at larger batches.

`mfdeploy verify` re-checks a kept artifact: first its manifest's own content digest and every file the
manifest lists (each ok, changed or missing, with the command that remakes it), then the numbers. The
numbers are only computed when what they rest on (the manifest, model.onnx, the weights) is intact.

How the numbers are judged: in each case (inputs x batch) the max abs error on logits must be at most
``atol + rtol * scale``, where ``scale`` is the largest |logit| PyTorch gives in that case, and top-1 must be
identical. FP32 rounding grows with the logits, so an absolute limit alone fails trained checkpoints whose
logits reach the thousands on noise input while still being the same function."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mfdeploy.artifacts import (
    CHANGED,
    MANIFEST_NAME,
    MISSING,
    ONNX_FILE,
    UNPROTECTED,
    WEIGHTS_FILE,
    FileCheck,
    check_files,
)
from mfdeploy.errors import UserError
from mfdeploy.export.options import VERIFY_ATOL, VERIFY_RTOL
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.images.samples import builtin_images
from mfdeploy.metrics import logit_scale, tolerance
from mfdeploy.runtime.base import Runner
from mfdeploy.runtime.comparison import run_targets

EXIT_VERIFICATION_FAILED = 4
DYNAMIC_VERIFY_BATCHES = (1, 7, 32)  # a dynamic-batch graph is verified at these batch sizes
RULE = "max abs error <= atol + rtol * scale (the case's largest |logit| from PyTorch); top-1 identical"
TOLERANCE_HINT = "if the model's logits are this large by design, pass --rtol/--atol"


class VerificationError(UserError):
    """The exported model does not compute what PyTorch computes; the message has the figures."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_VERIFICATION_FAILED)


@dataclass
class VerificationCase:
    inputs: str  # "images" (real photographs) or "random"
    batch: int
    max_abs_error: float
    top1_agreement: float
    cosine: float
    passed: bool
    scale: float = 0.0  # the largest |logit| PyTorch gives in this case
    limit: float = 0.0  # the max abs error allowed: atol + rtol * scale

    def limit_text(self, atol: float, rtol: float) -> str:
        """``0.0196 = 0.0001 + 1e-05 x 1950``: the limit and where it comes from."""
        return f"{self.limit:.3g} = {atol:g} + {rtol:g} x {self.scale:.4g}"


@dataclass
class VerificationReport:
    reference: str
    candidate: str
    atol: float
    passed: bool
    cases: list[VerificationCase] = field(default_factory=list)
    rtol: float = VERIFY_RTOL

    @property
    def worst_error(self) -> float:
        return max((c.max_abs_error for c in self.cases), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worst_max_abs_error"] = self.worst_error
        data["rule"] = RULE
        return data

    def failure_message(self) -> str:
        return f"verification failed, {self.figures_failure()}"

    def figures_failure(self) -> str:
        """Each failed case with its error, the logits' scale and the limit they make, then, when top-1
        agrees everywhere (only the size of the error fails), the flags that change the limit."""
        bad = [c for c in self.cases if not c.passed]
        details = "; ".join(
            f"{c.inputs} batch {c.batch}: max abs error {c.max_abs_error:.3g} on logits up to {c.scale:.4g} "
            f"(limit {c.limit_text(self.atol, self.rtol)}), top-1 agreement {c.top1_agreement:.1%}, "
            f"cosine {c.cosine:.6f}"
            for c in bad
        )
        hint = f"; {TOLERANCE_HINT}" if all(c.top1_agreement == 1.0 for c in bad) else ""
        return f"{self.candidate} vs {self.reference}: {details}{hint}"


NUMBERS_REST_ON = (MANIFEST_NAME, ONNX_FILE, WEIGHTS_FILE)  # numbers from these, changed, would prove nothing
UNPROTECTED_WARNING = (
    f"{MANIFEST_NAME} has no content digest (written by an older mfdeploy), so its own content cannot be "
    "checked; re-export to protect it"
)


_STATE_TEXT = {CHANGED: "changed since it was written", MISSING: "is missing"}


@dataclass
class ArtifactCheck:
    """What `mfdeploy verify` found: every file's state, then the numbers (None when not computed)."""

    files: list[FileCheck]  # the manifest first, then every file it lists
    numbers: VerificationReport | None
    atol: float
    skipped: str | None = None  # why the numbers were not computed
    warnings: list[str] = field(default_factory=list)
    rtol: float = VERIFY_RTOL

    @property
    def broken_files(self) -> list[FileCheck]:
        return [f for f in self.files if f.failed]

    @property
    def passed(self) -> bool:
        return not self.broken_files and self.numbers is not None and self.numbers.passed

    def to_dict(self) -> dict[str, Any]:
        """The numeric report's keys (as before files were checked), with the file list beside them."""
        numbers = self.numbers.to_dict() if self.numbers else {"reference": None, "candidate": None, "cases": []}
        return {
            **numbers,
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "numbers_passed": self.numbers.passed if self.numbers else None,
            "skipped": self.skipped,
            "files": [f.to_dict() for f in self.files],
            "warnings": self.warnings,
        }

    def failure_message(self) -> str:
        """Which file changed and which command remakes it, then the figures that failed."""
        parts = [f"{f.name} {_STATE_TEXT[f.status]}; remake it with `{f.remake}`" for f in self.broken_files]
        if self.numbers is not None and not self.numbers.passed:
            parts.append(self.numbers.figures_failure())
        return "verification failed: " + "; ".join(parts)


def verification_inputs(
    preprocessing: Preprocessing, batch: int, in_chans: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Real photographs (the manifest's preprocessing) and standard-normal noise, ``batch`` of each."""
    rng = np.random.default_rng(seed)
    images = preprocessing.batch(builtin_images(batch))
    if in_chans != 3:
        images = np.repeat(images.mean(axis=1, keepdims=True), in_chans, axis=1)
    random = rng.standard_normal((batch, in_chans, preprocessing.imgsz, preprocessing.imgsz)).astype(np.float32)
    return {"images": images, "random": random}


def verify_runner(
    reference: Runner,
    candidate: Runner,
    preprocessing: Preprocessing,
    batches: list[int],
    in_chans: int = 3,
    atol: float = VERIFY_ATOL,
    rtol: float = VERIFY_RTOL,
) -> VerificationReport:
    """Compare ``candidate`` with ``reference``: in every case, max abs error on logits <= atol + rtol *
    the case's largest |reference logit|, and identical top-1."""
    inputs = verification_inputs(preprocessing, max(batches), in_chans)
    report = VerificationReport(reference.label, candidate.label, atol, passed=True, rtol=rtol)
    reference.load()  # loaded here, so that both stay loaded for every case
    candidate.load()
    for kind, data in inputs.items():
        for batch in batches:
            report.cases.append(_verify_case(reference, candidate, kind, data[:batch], batch, atol, rtol))
            report.passed &= report.cases[-1].passed
    return report


def _verify_case(
    reference: Runner, candidate: Runner, kind: str, data: np.ndarray, batch: int, atol: float, rtol: float
) -> VerificationCase:
    """One case: the reference's logits give the scale, and so the limit the candidate is held to."""
    expected = reference.infer_all(data, batch)
    (run,) = run_targets(expected, [candidate], data, batch)
    figures = run.figures
    scale = logit_scale(expected)
    limit = tolerance(atol, rtol, scale)
    passed = figures["max_abs_error"] <= limit and figures["top1_agreement"] == 1.0
    return VerificationCase(
        kind, batch, figures["max_abs_error"], figures["top1_agreement"], figures["cosine"], passed, scale, limit
    )


def verify_artifact(
    artifact,
    provider: str | None = None,
    atol: float = VERIFY_ATOL,
    threads: int | None = None,
    rtol: float = VERIFY_RTOL,
) -> ArtifactCheck:
    """Re-check an artifact: the manifest and every file it lists, then its ONNX graph against the PyTorch
    model it was exported from (not computed when a file the numbers rest on is changed or missing)."""
    from mfdeploy.option_values import check_threads, check_tolerances

    check_tolerances(atol, rtol)  # a bad limit is a bad option, not a failed verification
    check_threads(threads)
    files = check_files(artifact)
    warnings = [UNPROTECTED_WARNING] if files[0].status == UNPROTECTED else []
    blocking = [f.name for f in files if f.failed and f.name in NUMBERS_REST_ON]
    if blocking:
        skipped = f"numbers not compared: {', '.join(blocking)} cannot be trusted"
        return ArtifactCheck(files, None, atol, skipped, warnings, rtol)
    numbers = _verify_numbers(artifact, provider, atol, rtol, threads)
    return ArtifactCheck(files, numbers, atol, None, warnings, rtol)


def _verify_numbers(
    artifact, provider: str | None, atol: float, rtol: float, threads: int | None
) -> VerificationReport:
    """The artifact's ONNX graph against the PyTorch model from its stored weights."""
    from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from mfdeploy.runtime.torch_runner import TorchRunner

    graph = artifact.require(ONNX_FILE, "export it with `mfdeploy export --target onnx`")
    batches = [artifact.static_batch] if artifact.static_batch else list(DYNAMIC_VERIFY_BATCHES)
    in_chans = artifact.in_chans
    with TorchRunner.from_artifact(artifact) as reference, OnnxRuntimeRunner(graph, provider, threads) as candidate:
        return verify_runner(reference, candidate, artifact.preprocessing, batches, in_chans, atol, rtol)
