"""ONNX Runtime CPU latency of ONNX graphs side by side, measured in a process that loads nothing else.

    python benchmarks/ort_timing.py --batch 8 [--imgsz 224] [--runs 200] [--warmup 20] [--rounds 20]
        [--threads 2] [--no-spinning] A.onnx B.onnx ...

prints ``{"median_ms": {"A.onnx": ..., ...}, "rounds_ms": {"A.onnx": [[...], ...], ...}}`` as JSON: each graph's
median latency on the same standard-normal input ("images", [batch, 3, imgsz, imgsz]), 2 intra-op threads, in
alternating blocks, and the latencies of each block (for :func:`paired_ratio`).

``--threads 1`` or ``--no-spinning`` (ONNX Runtime's idle threads sleep instead of spinning) are diagnostic
conditions, not how ONNX Runtime serves a model by default: on a shared 2-core host, two graphs' paired ratio
with 2 spinning threads moved by up to 0.06 between consecutive runs, and by 0.015 at most under either.

Why a process of its own: this is how ONNX Runtime serves a model, and a benchmark that has just run PyTorch
(the reference outputs, the export) does not measure that. In one that had run the official 52m forward pass
at batch 8 with torch, the plain export's batch-8 median went from 22.7 to 31.0 ms here, and ours from 17.5
to 32.3 ms: the ratio between two graphs then says more about the process than about the graphs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

THREADS = 2
ROUNDS = 20  # blocks per graph: short enough that a burst of load on a shared host meets both graphs


def session(model: onnx.ModelProto | str | Path, threads: int = THREADS, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (inter-op 1), from a graph or its file; ``spinning=False``
    lets idle pool threads sleep (ONNX Runtime's session.intra_op.allow_spinning)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def interleaved_rounds(
    candidates: dict[str, Callable[[], object]], runs: int, warmup: int, rounds: int = 5
) -> dict[str, list[list[float]]]:
    """Per candidate, the latencies (ms) of each round's block of runs, measured in alternating blocks.

    Blocks rather than single calls: torch's and ONNX Runtime's thread pools keep spinning for a
    moment after a call, so alternating call by call would measure one runtime's threads stealing
    the cores from the other. Each block starts with its own warm-up, and the order of the candidates
    is reversed every other round, so that none always runs right after the same other one.
    """
    times: dict[str, list[list[float]]] = {name: [] for name in candidates}
    per_block = max(1, runs // rounds)
    order = list(candidates)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            fn = candidates[name]
            for _ in range(max(1, warmup // rounds)):
                fn()
            block = []
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                block.append((time.perf_counter() - start) * 1e3)
            times[name].append(block)
    return times


def medians_of_all_runs(timed: dict[str, list[list[float]]]) -> dict[str, float]:
    """Median latency (ms) per candidate over all its runs, from :func:`interleaved_rounds`."""
    return {name: statistics.median(all_runs(blocks)) for name, blocks in timed.items()}


def all_runs(blocks: list[list[float]]) -> list[float]:
    return [t for block in blocks for t in block]


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], runs: int, warmup: int, rounds: int = 5
) -> dict[str, float]:
    """Median latency (ms) per candidate over all its runs in :func:`interleaved_rounds`."""
    return medians_of_all_runs(interleaved_rounds(candidates, runs, warmup, rounds))


def paired_ratio(rounds_a: list[list[float]], rounds_b: list[list[float]]) -> float:
    """Median over the rounds of (A's median / B's median) in that round: A against B, each round comparing
    blocks run moments apart. On a shared host, load that comes and goes for seconds slows whichever block it
    meets; a ratio of overall medians then moves with it, a median of per-round ratios much less."""
    return statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(rounds_a, rounds_b))


def time_in_fresh_process(
    graphs: Sequence[Path],
    batch: int,
    imgsz: int,
    runs: int,
    warmup: int,
    rounds: int = ROUNDS,
    threads: int = THREADS,
    spinning: bool = True,
) -> dict[str, dict]:
    """What this script prints, measured in a child interpreter: ``median_ms`` (per graph file, keyed by its
    str) and ``rounds_ms`` (per graph, each round's block of latencies)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--batch", str(batch), "--imgsz", str(imgsz)]
    command += ["--runs", str(runs), "--warmup", str(warmup), "--rounds", str(rounds), "--threads", str(threads)]
    command += [*([] if spinning else ["--no-spinning"]), *map(str, graphs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads")
    parser.add_argument("--no-spinning", action="store_true", help="idle pool threads sleep instead of spinning")
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.imgsz, args.imgsz)).astype(np.float32)
    sessions = {str(path): session(path, args.threads, not args.no_spinning) for path in args.graphs}
    timed = interleaved_rounds(
        {name: (lambda s=s: s.run(None, {"images": x})) for name, s in sessions.items()},
        args.runs,
        args.warmup,
        args.rounds,
    )
    print(json.dumps({"median_ms": medians_of_all_runs(timed), "rounds_ms": timed}))


if __name__ == "__main__":
    main()
