"""Per-tensor activation statistics from one FP32 run over the calibration set, cached on disk.

For every float tensor the graph computes: min, max, and how many values would overflow FP16 or fall
below its smallest normal number (for the FP16 graph). For the tensors an INT8 graph quantizes: a
2048-bin symmetric histogram, from which every calibration method (minmax, entropy, percentile)
derives its range without running the model again. The cache key is the model's sha256, the data's
sha256 and the preprocessing, so a changed model or data set never reuses stale statistics.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mfdeploy.console import progress
from mfdeploy.fileio import atomic_path
from mfdeploy.images.arrays import ARRAY_READ_ERRORS

STATS_FORMAT = 1
# What reading a damaged cache file raises: whatever a malformed .npz raises (ARRAY_READ_ERRORS), and for
# unexpected content KeyError, TypeError, AttributeError. A cache that cannot be read is no cache.
_CACHE_READ_ERRORS = (*ARRAY_READ_ERRORS, KeyError, TypeError, AttributeError)
NUM_BINS = 2048  # signed histogram over [-T, T]; T grows by powers of two as larger values appear
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14


@dataclass
class CalibrationStats:
    names: list[str]
    minimum: np.ndarray
    maximum: np.ndarray
    count: np.ndarray
    n_fp16_overflow: np.ndarray
    n_fp16_underflow: np.ndarray  # 0 < |x| < 2^-14
    hist_names: list[str]
    hist: np.ndarray  # [len(hist_names), NUM_BINS]
    hist_range: np.ndarray  # T per histogram
    key: str
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, name: str) -> int:
        return self._index[name]

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.names)}
        self._hist_index = {name: i for i, name in enumerate(self.hist_names)}

    def absmax(self, name: str) -> float:
        i = self._index[name]
        return float(max(abs(self.minimum[i]), abs(self.maximum[i])))

    def histogram(self, name: str) -> tuple[np.ndarray, float]:
        i = self._hist_index[name]
        return self.hist[i], float(self.hist_range[i])

    def has_histogram(self, name: str) -> bool:
        return name in self._hist_index

    # -- cache ------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    names=np.array(json.dumps(self.names)),
                    hist_names=np.array(json.dumps(self.hist_names)),
                    meta=np.array(json.dumps(dict(self.meta, key=self.key, format=STATS_FORMAT))),
                    minimum=self.minimum,
                    maximum=self.maximum,
                    count=self.count,
                    n_fp16_overflow=self.n_fp16_overflow,
                    n_fp16_underflow=self.n_fp16_underflow,
                    hist=self.hist,
                    hist_range=self.hist_range,
                )

    @classmethod
    def load(cls, path: Path, key: str) -> "CalibrationStats | None":
        """The cached statistics if ``path`` holds them for exactly ``key``, else None."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("key") != key or meta.get("format") != STATS_FORMAT:
                    return None
                return cls(
                    names=json.loads(str(data["names"])),
                    minimum=data["minimum"],
                    maximum=data["maximum"],
                    count=data["count"],
                    n_fp16_overflow=data["n_fp16_overflow"],
                    n_fp16_underflow=data["n_fp16_underflow"],
                    hist_names=json.loads(str(data["hist_names"])),
                    hist=data["hist"],
                    hist_range=data["hist_range"],
                    key=key,
                    meta=meta,
                )
        except _CACHE_READ_ERRORS:
            return None


def stats_key(model_sha256: str, data_sha256: str, preprocessing: dict[str, Any]) -> str:
    """What the statistics depend on: the exact graph, the exact data, the preprocessing."""
    payload = json.dumps(
        {
            "model": model_sha256,
            "data": data_sha256,
            "preprocessing": preprocessing,
            "format": STATS_FORMAT,
            "bins": NUM_BINS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float32 tensor a node produces (after shape inference), in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    names = [model.graph.input[0].name]
    for node in model.graph.node:
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT:
                names.append(out)
    return list(dict.fromkeys(names))


class _Histogram:
    """A symmetric NUM_BINS-bin histogram whose range doubles (merging bin pairs) as needed."""

    def __init__(self) -> None:
        self.counts = np.zeros(NUM_BINS, np.int64)
        self.range = 0.0

    def add(self, values: np.ndarray) -> None:
        absmax = float(np.max(np.abs(values))) if values.size else 0.0
        if not np.isfinite(absmax):
            values = values[np.isfinite(values)]
            absmax = float(np.max(np.abs(values))) if values.size else 0.0
        if absmax == 0.0 and self.range == 0.0:
            self.counts[NUM_BINS // 2] += values.size
            return
        if self.range == 0.0:
            self.range = absmax
        elif absmax > self.range:
            factor = 2 ** int(np.ceil(np.log2(absmax / self.range)))
            self._widen(factor)
        index = ((values.astype(np.float64) + self.range) * (NUM_BINS / (2 * self.range))).astype(np.int64)
        np.clip(index, 0, NUM_BINS - 1, out=index)
        self.counts += np.bincount(index, minlength=NUM_BINS)

    def _widen(self, factor: int) -> None:
        half = NUM_BINS // 2
        if factor >= NUM_BINS:
            negative, positive = self.counts[:half].sum(), self.counts[half:].sum()
            self.counts[:] = 0
            self.counts[half - 1], self.counts[half] = negative, positive
        else:
            merged = self.counts.reshape(-1, factor).sum(axis=1)  # NUM_BINS / factor bins, centred on zero
            self.counts[:] = 0
            start = half - len(merged) // 2
            self.counts[start : start + len(merged)] = merged
        self.range *= factor


def collect_stats(
    model_path: Path,
    images: np.ndarray,
    histogram_tensors: list[str],
    batch_size: int,
    key: str,
    threads: int | None = None,
) -> CalibrationStats:
    """Run the FP32 graph once over ``images`` (batch by batch) and record every float tensor."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    names = _float_tensors(model)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing and name != model.graph.input[0].name:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # All intermediate tensors are outputs here, so graph fusions could not apply anyway.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    n = len(names)
    minimum = np.full(n, np.inf)
    maximum = np.full(n, -np.inf)
    count = np.zeros(n, np.int64)
    overflow = np.zeros(n, np.int64)
    underflow = np.zeros(n, np.int64)
    index = {name: i for i, name in enumerate(names)}
    hist_names = [h for h in dict.fromkeys(histogram_tensors) if h in index]
    histograms = {name: _Histogram() for name in hist_names}
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("calibrate (FP32 run)", total=len(images), status="")
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            values = dict(zip(outputs, session.run(outputs, {input_name: batch})))
            values[input_name] = batch
            for name, i in index.items():
                array = values.get(name)
                if array is None or array.size == 0:
                    continue
                finite = array[np.isfinite(array)] if not np.isfinite(array).all() else array
                if finite.size:
                    minimum[i] = min(minimum[i], float(finite.min()))
                    maximum[i] = max(maximum[i], float(finite.max()))
                magnitude = np.abs(array)
                count[i] += array.size
                overflow[i] += int(np.count_nonzero(magnitude > FP16_MAX))
                underflow[i] += int(np.count_nonzero((magnitude < FP16_MIN_NORMAL) & (magnitude > 0)))
                if name in histograms:
                    histograms[name].add(array.ravel())
            bar.update(task, advance=len(batch))
    hist = np.stack([histograms[h].counts for h in hist_names]) if hist_names else np.zeros((0, NUM_BINS), np.int64)
    hist_range = np.array([histograms[h].range for h in hist_names], np.float64)
    minimum[~np.isfinite(minimum)] = 0.0
    maximum[~np.isfinite(maximum)] = 0.0
    return CalibrationStats(
        names,
        minimum,
        maximum,
        count,
        overflow,
        underflow,
        hist_names,
        hist,
        hist_range,
        key,
        meta={"images": int(len(images)), "seconds": round(time.perf_counter() - started, 3)},
    )
