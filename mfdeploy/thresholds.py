"""The pass/fail thresholds of `mfdeploy parity` (and the verdict of `calibrate`): one table, per precision.

A backend passes when, against PyTorch FP32 on the same inputs:
- max_abs_error (on logits) <= max_abs_error (None: not checked; absolute logit errors of FP16 and INT8
  scale with the model's logit range, so those precisions are judged on cosine and agreement);
- mean cosine similarity of the logit vectors >= min_cosine;
- top-1 agreement (the reference's top class is the backend's top class) >= min_top1, and the reference's
  top class is in the backend's top 5 for >= min_top5 of the images;
- no NaN or Inf.
stage_rel_error is the relative L2 error ||backend - torch|| / ||torch|| above which a stage output
"parts" from PyTorch in the layer-by-layer localisation.

An untrained model (random weights, as the manifest records) has nearly flat logits: a perturbation far
below what cosine notices swaps its top classes, and by how much depends on the CPU's INT8 kernels (AVX2
vs AVX-512 VNNI). Its top-1/top-5 agreement is therefore reported but not gated (``None``); cosine, abs
error and NaN/Inf still are.

Every value can be overridden from the command line (--atol, --min-cosine, --min-top1, --min-top5,
--stage-tol); an override applies to every backend in the run, an untrained model's included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mfdeploy.errors import UserError
from mfdeploy.option_values import check_fraction, check_positive


@dataclass(frozen=True)
class Thresholds:
    max_abs_error: float | None
    min_cosine: float
    min_top1: float | None  # None: reported, not gated (an untrained model)
    min_top5: float | None
    stage_rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    # FP32 backends (ONNX Runtime, TensorRT with TF32 matmuls, the Core ML evaluator in FP32).
    "fp32": Thresholds(max_abs_error=1e-3, min_cosine=0.99999, min_top1=0.99, min_top5=0.99, stage_rel_error=1e-3),
    # FP16 graphs, Core ML FP16 compute.
    "fp16": Thresholds(max_abs_error=None, min_cosine=0.999, min_top1=0.97, min_top5=0.99, stage_rel_error=3e-2),
    # INT8 Q/DQ graphs and int8-weight Core ML packages.
    "int8": Thresholds(max_abs_error=None, min_cosine=0.99, min_top1=0.90, min_top5=0.97, stage_rel_error=0.25),
}


UNTRAINED_NOTE = (
    "untrained model (random weights): its logits are nearly flat, so tiny numeric differences swap its top "
    "classes; top-1/top-5 agreement figures are not meaningful and are reported, not gated "
    "(cosine, abs error and NaN/Inf still are)"
)


# `mfdeploy predict` shows the labels themselves, so its note says first that they mean nothing.
UNTRAINED_LABELS_NOTE = (
    "untrained model (random weights): the labels it predicts are meaningless, and its logits are nearly flat, "
    "so tiny numeric differences swap its top classes between targets; top-1/top-5 agreement is not meaningful "
    "either"
)


def untrained_note(untrained: bool, labels: bool = False) -> str | None:
    """The one line every accuracy or agreement report shows (and records) for an untrained model;
    ``labels``: the report shows predicted labels (`mfdeploy predict`)."""
    if not untrained:
        return None
    return UNTRAINED_LABELS_NOTE if labels else UNTRAINED_NOTE


@dataclass(frozen=True)
class Failure:
    metric: str
    value: float
    limit: float

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "limit": self.limit, "text": self.describe()}

    def describe(self) -> str:
        if self.metric in ("max_abs_error", "nan_inf"):
            return f"{self.metric} {self.value:.4g} > {self.limit:.4g} (over by {self.value - self.limit:.3g})"
        return f"{self.metric} {self.value:.5g} < {self.limit:.5g} (short by {self.limit - self.value:.3g})"


# the flag that overrides each threshold; errors and tolerances are above 0, the rest are shares in [0, 1]
OVERRIDE_FLAGS = {
    "max_abs_error": "--atol",
    "min_cosine": "--min-cosine",
    "min_top1": "--min-top1",
    "min_top5": "--min-top5",
    "stage_rel_error": "--stage-tol",
}
_TOLERANCES = ("max_abs_error", "stage_rel_error")


def check_overrides(overrides: dict[str, float | None] | None) -> dict[str, float]:
    """The given overrides, each checked: a NaN limit would make every comparison pass, and a cosine of 2
    or a negative tolerance would fail every backend for a reason that is not the backend's."""
    checked: dict[str, float] = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDE_FLAGS:
            raise UserError(f"unknown parity threshold {key!r}; choose from {', '.join(OVERRIDE_FLAGS)}")
        if value is None:
            continue
        flag = OVERRIDE_FLAGS[key]
        checked[key] = check_positive(value, flag) if key in _TOLERANCES else check_fraction(value, flag)
    return checked


def thresholds_for(
    precision: str, overrides: dict[str, float | None] | None = None, untrained: bool = False
) -> Thresholds:
    """The default thresholds of ``precision`` (without top-k gates for an untrained model), with any
    command-line overrides applied on top: a limit the user gives is a limit, whatever the weights."""
    base = DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["fp32"])
    if untrained:
        base = replace(base, min_top1=None, min_top5=None)
    given = check_overrides(overrides)
    return replace(base, **given) if given else base


def judge(figures: dict[str, float], limits: Thresholds) -> list[Failure]:
    """Every threshold ``figures`` (from compare_logits) breaks."""
    failures = []
    bad_values = figures["nan_count"] + figures["inf_count"]
    if bad_values:
        failures.append(Failure("nan_inf", bad_values, 0))
    # written as "not within the limit", so that a NaN figure fails instead of passing every comparison
    if limits.max_abs_error is not None and not figures["max_abs_error"] <= limits.max_abs_error:
        failures.append(Failure("max_abs_error", figures["max_abs_error"], limits.max_abs_error))
    for metric, limit in (
        ("cosine", limits.min_cosine),
        ("top1_agreement", limits.min_top1),
        ("top5_agreement", limits.min_top5),
    ):
        if limit is not None and not figures[metric] >= limit:
            failures.append(Failure(metric, figures[metric], limit))
    return failures
