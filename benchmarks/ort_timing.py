"""ONNX Runtime CPU latency of ONNX graphs side by side, measured in a process that loads nothing else.

    python benchmarks/ort_timing.py --batch 8 [--imgsz 224] [--runs 200] [--warmup 60] [--rounds 20]
        [--threads 2] [--no-spinning] [--settle-s 0.1] [--spin-tail] A.onnx B.onnx ...

prints ``{"median_ms": {"A.onnx": ..., ...}, "rounds_ms": {"A.onnx": [[...], ...], ...}}`` as JSON: each graph's
median latency on the same standard-normal input ("images", [batch, 3, imgsz, imgsz]), 2 intra-op threads, in
alternating blocks, and the latencies of each block (for :func:`paired_ratio`).

Each block starts after a pause (``--settle-s``, 0.1 s) and with its own warm-up (``--warmup`` spread over the
blocks, 3 calls each by default). The pause is for ONNX Runtime's pool threads: after a session's last call they
spin on for 40-50 ms (``--spin-tail`` prints how many cores a graph's session keeps busy in each 10 ms after
its last call), so a graph timed right after another shared the cores with the other's spinning thread, which
a model served on its own never does. On a 2-core AMD EPYC at batch 1 it slowed about the first 4 calls of
each block to about twice their latency. The official 52m's batch-1 ratio to the plain export (see
official_export.py) was 0.754-0.788 in five runs with the pause, and 0.803-0.823 in five runs without it,
alternating with those. The warm-up is for the call after the pause: 1.2 ms slower than the rest there, the
second 0.3 ms.

``--threads 1`` or ``--no-spinning`` (ONNX Runtime's idle threads sleep instead of spinning) are diagnostic
conditions, not how ONNX Runtime serves a model by default. Before the pause, on a shared 2-core host, two
graphs' paired ratio with 2 spinning threads moved by up to 0.06 between consecutive runs, and by 0.015 at most
under either.

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
WARMUP = 60  # warm-up calls per graph, spread over its blocks: 3 after each pause
# Pause before each block, so that the pool threads of the candidate timed before it have stopped spinning.
# ONNX Runtime's idle intra-op threads spin for 40-50 ms after a session's last call (2 threads, official 52m at
# batch 1, on a 2-core AMD EPYC: about one core busy in each 10 ms after the call, none from 60 ms on; see
# busy_cores_after_last_call); without the pause a block of ten batch-1 calls ran almost entirely beside it.
SETTLE_S = 0.1
SLICE_S = 0.01  # busy_cores_after_last_call's slice


def seconds_arg(text: str) -> float:
    """An argparse type: a pause in seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a pause must be 0 s or more, got {text}")
    return value


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
    candidates: dict[str, Callable[[], object]],
    runs: int,
    warmup: int,
    rounds: int = 5,
    settle_s: float = SETTLE_S,
) -> dict[str, list[list[float]]]:
    """Per candidate, the latencies (ms) of each round's block of runs, measured in alternating blocks.

    Blocks rather than single calls, and a pause of ``settle_s`` before each block: torch's and ONNX
    Runtime's thread pools keep spinning after a call (ONNX Runtime's for about 40-50 ms, see SETTLE_S), so
    a candidate timed right after another would share the cores with the other's spinning threads, which a
    model served on its own never does. Each block starts with its own warm-up, and the order of the
    candidates is reversed every other round, so that none always runs right after the same other one.
    """
    times: dict[str, list[list[float]]] = {name: [] for name in candidates}
    per_block = max(1, runs // rounds)
    order = list(candidates)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            fn = candidates[name]
            time.sleep(settle_s)
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


def busy_cores_after_last_call(call: Callable[[], object], slices: int = 10, repeats: int = 20) -> list[float]:
    """How many cores this process keeps busy in each SLICE_S after the last of ten calls of ``call``, while
    the caller sleeps (median over ``repeats``): what a session's pool threads leave running after a call,
    which is why :func:`interleaved_rounds` pauses before each block."""
    per_slice: list[list[float]] = [[] for _ in range(slices)]
    for _ in range(repeats):
        for _ in range(10):
            call()
        for values in per_slice:
            cpu, wall = time.process_time(), time.perf_counter()
            time.sleep(SLICE_S)
            values.append((time.process_time() - cpu) / (time.perf_counter() - wall))
    return [round(statistics.median(values), 2) for values in per_slice]


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
    settle_s: float = SETTLE_S,
) -> dict[str, dict]:
    """What this script prints, measured in a child interpreter: ``median_ms`` (per graph file, keyed by its
    str) and ``rounds_ms`` (per graph, each round's block of latencies)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--batch", str(batch), "--imgsz", str(imgsz)]
    command += ["--runs", str(runs), "--warmup", str(warmup), "--rounds", str(rounds), "--threads", str(threads)]
    command += ["--settle-s", str(settle_s)]
    command += [*([] if spinning else ["--no-spinning"]), *map(str, graphs)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="warm-up calls per graph, over its blocks")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads")
    parser.add_argument("--no-spinning", action="store_true", help="idle pool threads sleep instead of spinning")
    parser.add_argument("--settle-s", type=seconds_arg, default=SETTLE_S, help="pause before each block (s)")
    parser.add_argument(
        "--spin-tail", action="store_true", help="print the cores each graph keeps busy after its last call"
    )
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.imgsz, args.imgsz)).astype(np.float32)
    sessions = {str(path): session(path, args.threads, not args.no_spinning) for path in args.graphs}
    if args.spin_tail:
        tails = {}
        for name, s in sessions.items():
            tails[name] = busy_cores_after_last_call(lambda s=s: s.run(None, {"images": x}))
            time.sleep(args.settle_s)
        print(json.dumps({"slice_ms": SLICE_S * 1e3, "busy_cores": tails}))
        return
    timed = interleaved_rounds(
        {name: (lambda s=s: s.run(None, {"images": x})) for name, s in sessions.items()},
        args.runs,
        args.warmup,
        args.rounds,
        args.settle_s,
    )
    print(json.dumps({"median_ms": medians_of_all_runs(timed), "rounds_ms": timed}))


if __name__ == "__main__":
    main()
