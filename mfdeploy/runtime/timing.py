"""The timing loop: warm-up first (never recorded), then timed calls of ``runner.run`` alone.

It lives with the runners, below the benchmark and calibration, so that every latency mfdeploy reports
(``mfdeploy bench``, the CPU figures of ``mfdeploy calibrate``) is measured by the same loop.

What one sample covers: a single ``runner.run(images)`` call on an input prepared once beforehand
(contiguous float32, the model's shape), from just before the call to just after it returns the
outputs as numpy arrays (so a GPU backend's copies back to the host are included, as a user of the
runner sees them). The harness's own share of each sample is two clock reads and a list append,
measured by ``benchmarks/harness_overhead.py`` with the no-op runner.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_RUNS = 10  # --min-time still times at least this many calls, so percentiles mean something


@dataclass(frozen=True)
class TimingPlan:
    """How many calls to make: ``warmup`` untimed, then ``runs`` timed or timed for ``min_time_s``."""

    warmup: int = 20
    runs: int | None = 200
    min_time_s: float | None = None
    min_runs: int = MIN_RUNS

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if (self.runs is None) == (self.min_time_s is None):
            raise ValueError("give exactly one of runs and min_time_s")
        if self.runs is not None and self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.min_time_s is not None and not self.min_time_s > 0:
            raise ValueError(f"min_time_s must be > 0, got {self.min_time_s}")

    def to_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "runs": self.runs, "min_time_s": self.min_time_s, "min_runs": self.min_runs}


def make_images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A fixed, normalised-image-like input (standard normal, float32, C-contiguous)."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.standard_normal((batch, channels, height, width), dtype=np.float32))


def warm_up(call: Callable[[Any], Any], argument: Any, count: int) -> None:
    for _ in range(count):
        call(argument)


def time_calls(call: Callable[[Any], Any], argument: Any, plan: TimingPlan) -> list[float]:
    """Milliseconds of each timed ``call(argument)`` (after none: warm up with :func:`warm_up` first).

    The garbage collector is paused while timing, as ``timeit`` does, so that a collection triggered by
    the harness's own allocations does not land inside a sample.
    """
    clock = time.perf_counter
    samples: list[float] = []
    append = samples.append
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if plan.runs is not None:
            for _ in range(plan.runs):
                start = clock()
                call(argument)
                append(clock() - start)
        else:
            deadline = clock() + float(plan.min_time_s or 0.0)
            while True:
                start = clock()
                call(argument)
                end = clock()
                append(end - start)
                if end >= deadline and len(samples) >= plan.min_runs:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [s * 1e3 for s in samples]
