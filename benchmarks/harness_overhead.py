"""Benchmark: what the `mfdeploy bench` harness itself adds to each timed call.

    python benchmarks/harness_overhead.py [--artifact DIR] [--runs 2000] [--threads 2] [--json out.json]

The no-op runner (target ``noop``, benchmark-only) returns a preallocated array without work, so its
recorded latency is the harness's share of every sample: two clock reads, a bound-method call through
the runner interface and a list append. It is measured exactly as real targets are: ``run_bench`` with
one fresh process per cell, the same warm-up and the same loop, next to ONNX Runtime on Mobile-Former 26m
at batch 1 (224x224, 2 threads by default), the fastest real target this project measures here. The
claim to check: harness overhead per call < 5% of that latency.

It also times the loop from outside (wall time of the whole timed loop / runs, in this process), which
adds what falls between two samples and so never enters them: the loop counter and the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mfdeploy.artifacts import Artifact
from mfdeploy.benchmark.bench import BenchOptions, run_bench
from mfdeploy.benchmark.noop import NOOP_TARGET, NoopRunner
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.runtime.timing import TimingPlan, make_images, time_calls, warm_up


def loop_wall_per_call_us(artifact: Artifact, runs: int) -> float:
    """Wall time of the whole timed loop around the no-op runner, per call, in microseconds."""
    runner = NoopRunner.from_artifact(artifact)
    runner.load()
    images = make_images(1, 3, artifact.imgsz, artifact.imgsz)
    warm_up(runner.run, images, 100)
    start = time.perf_counter()
    time_calls(runner.run, images, TimingPlan(warmup=0, runs=runs))
    return (time.perf_counter() - start) / runs * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="A 26m artifact folder (default: export one at 224px)")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="Write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.artifact or export(ExportOptions(size="26m", out=Path(tmp))).artifact
        artifact = Artifact.open(folder)
        document = run_bench(
            BenchOptions(
                artifact=Path(folder),
                targets=[NOOP_TARGET, "onnx"],
                batches=[1],
                plan=TimingPlan(warmup=args.warmup, runs=args.runs),
                threads=args.threads,
            )
        )
        loop_us = loop_wall_per_call_us(artifact, max(args.runs, 100_000))
    cells = {entry["target"]: entry["latency_ms"] for entry in document["results"]}
    if set(cells) != {NOOP_TARGET, "onnx"}:
        print(f"could not measure both targets: {document['skipped']}", file=sys.stderr)
        return 1
    noop, onnx = cells[NOOP_TARGET], cells["onnx"]
    figures = {
        "model": f"{artifact.size} @{artifact.imgsz}px, batch 1, {args.threads} threads",
        "device": document["device"],
        "runs": args.runs,
        "onnx_p50_ms": onnx["p50"],
        "onnx_mean_ms": onnx["mean"],
        "noop_p50_us": round(noop["p50"] * 1e3, 3),
        "noop_mean_us": round(noop["mean"] * 1e3, 3),
        "noop_p99_us": round(noop["p99"] * 1e3, 3),
        "loop_wall_per_call_us": round(loop_us, 3),
        "overhead_share_of_onnx_p50": noop["p50"] / onnx["p50"],
        "overhead_share_of_onnx_p50_worst": max(noop["mean"], loop_us / 1e3) / onnx["p50"],
        "load_average_at_start": document["environment"].get("load_average_at_start"),
    }
    print(
        f"ONNX Runtime {figures['model']}: p50 {onnx['p50']:.3f} ms (mean {onnx['mean']:.3f} ms)\n"
        f"harness per call (no-op runner, fresh process): p50 {figures['noop_p50_us']:.3f} us, "
        f"mean {figures['noop_mean_us']:.3f} us, p99 {figures['noop_p99_us']:.3f} us\n"
        f"timed loop wall time per call, in-process: {figures['loop_wall_per_call_us']:.3f} us\n"
        f"overhead / ORT p50: {figures['overhead_share_of_onnx_p50']:.4%} "
        f"(worst of mean and loop wall: {figures['overhead_share_of_onnx_p50_worst']:.4%}; limit 5%)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["overhead_share_of_onnx_p50_worst"] < 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
