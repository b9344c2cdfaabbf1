"""Latency statistics: percentiles with a stated method, the summary every result carries, and the
spread rules that say when a machine was too noisy to trust the tail.

Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7, numpy's default
``"linear"`` method): p on n sorted samples sits at rank (n - 1) * p / 100. It is the method most tools
(numpy, pandas, spreadsheets) use, so figures can be re-derived from raw samples anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

PERCENTILES = (50, 90, 95, 99)

# Spread rules. A fixed graph on a fixed input does the same work every call, so on a quiet machine its
# latency distribution is narrow: the slowest 1% stays well within 2x the median and the coefficient
# of variation is a few percent. Past these limits the figures describe the machine's load (other
# processes, frequency scaling, thermal throttling, a shared VM's neighbours) as much as the backend.
TAIL_RATIO_LIMIT = 2.0  # p99 / p50
CV_LIMIT = 0.25  # std / mean
MIN_RUNS_FOR_TAIL = 20  # below this, p99 is the maximum give or take interpolation


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples`` by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Summary:
    """Latency summary in milliseconds over ``n`` timed runs (warm-up excluded)."""

    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single run
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        return {key: (value if key == "n" else round(value, digits)) for key, value in asdict(self).items()}


def summarize(samples: Sequence[float]) -> Summary:
    """Mean, std, min, p50/p90/p95/p99 and max of ``samples``."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("cannot summarise zero samples")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("samples contain NaN or infinity")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(
        n=n,
        mean=mean,
        std=std,
        min=min(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        max=max(values),
    )


def fmt_ms(value: float) -> str:
    """Milliseconds for a message: 3 significant digits, without exponents for large values."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread_warnings(summary: Summary, what: str) -> list[str]:
    """Warnings for a distribution too wide (or too small) to be read as the backend's own latency."""
    warnings = []
    if summary.p50 > 0 and summary.p99 > TAIL_RATIO_LIMIT * summary.p50:
        warnings.append(
            f"{what}: p99 {fmt_ms(summary.p99)} ms is {summary.p99 / summary.p50:.1f}x p50 {fmt_ms(summary.p50)} ms "
            f"(limit {TAIL_RATIO_LIMIT:g}x): the machine was noisy; rerun on a quiet machine before trusting the tail"
        )
    if summary.mean > 0 and summary.std > CV_LIMIT * summary.mean:
        warnings.append(
            f"{what}: std is {summary.std / summary.mean:.0%} of the mean (limit {CV_LIMIT:.0%}): "
            "latency varied widely between runs; compare medians, not means"
        )
    if summary.n < MIN_RUNS_FOR_TAIL:
        warnings.append(f"{what}: only {summary.n} timed runs: p95/p99 are close to the maximum, not a tail estimate")
    return warnings
