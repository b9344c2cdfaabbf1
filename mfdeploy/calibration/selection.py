"""`calibrate --method all`: which method's INT8 graph becomes model.int8.onnx, and why, in words.

Every method is judged on its agreement with the FP32 graph on the held-out images. The metric the user
chose (``--select``: cosine, top-1 or top-5 agreement) decides; a tie on it goes to the higher mean cosine,
then the lower max abs error on the logits, then the fixed order of CALIBRATION_METHODS (minmax, entropy,
percentile), so the same figures always install the same graph. NaN counts as the worst value.
"""

from __future__ import annotations

import math
from typing import Any

from mfdeploy.artifacts import CALIBRATION_METHODS

# metric -> (key in the agreement figures, words, higher is better)
METRICS = {
    "cosine": ("cosine", "cosine", True),
    "top1": ("top1_agreement", "top-1 agreement", True),
    "top5": ("top5_agreement", "top-5 agreement", True),
    "max_abs_error": ("max_abs_error", "max abs error", False),
}


def format_metric(metric: str, value: float) -> str:
    if metric in ("top1", "top5"):
        return f"{value:.1%}"
    if metric == "cosine":
        return f"{value:.6f}"
    return f"{value:.3g}"


def _score(figures: dict[str, Any], metric: str) -> float:
    """The figure as a number to maximise: lower-is-better figures negated, NaN the worst."""
    key, _, higher = METRICS[metric]
    value = float(figures[key])
    if math.isnan(value):
        return -math.inf
    return value if higher else -value


def select_method(figures: dict[str, dict[str, Any]], metric: str, untrained: bool = False) -> dict[str, Any]:
    """Pick one of ``figures`` (method -> agreement with FP32) by ``metric``; returns the choice, the
    ranking on that metric and one sentence saying why the chosen method won (and how a tie was broken)."""
    chain = [metric] + [m for m in ("cosine", "max_abs_error") if m != metric]
    candidates = sorted(figures, key=CALIBRATION_METHODS.index)
    steps = []
    for step in chain:
        best = max(_score(figures[m], step) for m in candidates)
        winners = [m for m in candidates if _score(figures[m], step) == best]
        steps.append((step, candidates, winners))
        candidates = winners
        if len(candidates) == 1:
            break
    chosen = candidates[0]
    words = METRICS[metric][1]
    ranking = sorted(figures, key=lambda m: (-_score(figures[m], metric), CALIBRATION_METHODS.index(m)))
    values = ", ".join(f"{m} {format_metric(metric, figures[m][METRICS[metric][0]])}" for m in ranking)
    if len(figures) == 1:
        why = f"{chosen} is the only method calibrated"
    elif len(steps[0][2]) == 1:
        why = f"{chosen} has the highest {words} ({values})"
    else:
        tied = steps[0][2]
        value = format_metric(metric, figures[tied[0]][METRICS[metric][0]])
        why = f"{', '.join(tied)} tie on {words} at {value}"
        for step, among, winners in steps[1:]:
            name, better = METRICS[step][1], "highest" if METRICS[step][2] else "lowest"
            shown = ", ".join(f"{m} {format_metric(step, figures[m][METRICS[step][0]])}" for m in among)
            if len(winners) == 1:
                why += f"; the tie goes to the {better} {name}: {shown}"
            else:
                why += f"; they tie on {name} too ({shown})"
        if len(candidates) > 1:
            why += f"; the tie goes to the first in the order {', '.join(CALIBRATION_METHODS)}"
    result: dict[str, Any] = {
        "metric": metric,
        "chosen": chosen,
        "why": why,
        "ranking": [{"method": m, "value": figures[m][METRICS[metric][0]]} for m in ranking],
        "tie_break": [f"the {'higher' if METRICS[m][2] else 'lower'} {METRICS[m][1]}" for m in chain[1:]]
        + [f"the first in the order {', '.join(CALIBRATION_METHODS)}"],
    }
    if untrained and metric != "cosine":
        result["note"] = (
            f"{words} of an untrained model is noise (flat logits); --select cosine is the meaningful choice for it"
        )
    return result
