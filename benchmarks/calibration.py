"""Benchmark: calibrating 52m on 512 built-in images, re-calibrating from cached statistics, and the
ONNX Runtime CPU latency of the INT8 and FP16 graphs next to FP32.

    python benchmarks/calibration.py [--size 52m] [--calib-size 512] [--threads 2] [--json out.json]

Each step is the real `mfdeploy` command in a fresh process, timed end to end (Python start-up and
imports included); the report's own timings split that into data loading, the FP32 statistics run, the
graph rewrite and the held-out evaluation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def mfdeploy(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mfdeploy", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mfdeploy {' '.join(args)} failed:\n{done.stderr}")
    return seconds, (json.loads(done.stdout) if "--json" in args else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="52m")
    parser.add_argument("--calib-size", default="512")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {"size": args.size, "calib_size": int(args.calib_size), "threads": int(args.threads)}
    with tempfile.TemporaryDirectory() as out:
        mfdeploy("export", "--size", args.size, "--out", out)
        artifact = str(Path(out) / f"mobileformer_{args.size}")
        common = ("--calib-size", args.calib_size, "--threads", args.threads, "--json")
        seconds, report = mfdeploy("calibrate", artifact, "--method", "minmax", *common)
        results["first_calibration"] = {"wall_s": round(seconds, 2), "timings_s": report["timings_s"]}
        results["latency_ms"] = report["evaluation"]["ort_cpu_latency_ms"]
        results["agreement"] = {p: e["vs_fp32"] for p, e in report["evaluation"]["graphs"].items()}
        results["cpu_notes"] = {
            p: e["cpu_slower_than_fp32"]["why"]
            for p, e in report["evaluation"]["graphs"].items()
            if "cpu_slower_than_fp32" in e
        }
        for method in ("entropy", "percentile", "minmax"):
            seconds, report = mfdeploy("calibrate", artifact, "--method", method, "--no-latency", *common)
            assert report["stats"]["reused"], "expected the cached statistics to be reused"
            results[f"recalibration_{method}"] = {"wall_s": round(seconds, 2), "timings_s": report["timings_s"]}

    first = results["first_calibration"]
    print(f"Mobile-Former {args.size}, {args.calib_size} built-in images, ONNX Runtime CPU {args.threads} threads")
    print(
        f"first calibration (FP32 statistics run + INT8 and FP16 graphs + report): {first['wall_s']:.1f} s "
        f"{first['timings_s']}"
    )
    for method in ("entropy", "percentile", "minmax"):
        row = results[f"recalibration_{method}"]
        print(f"re-calibration from cache, {method:<10}: {row['wall_s']:.1f} s {row['timings_s']}")
    print(
        "median latency (ms): "
        + "; ".join(f"{p} b1 {v['b1']:.2f} b8 {v['b8']:.2f}" for p, v in results["latency_ms"].items())
    )
    for precision, agreement in results["agreement"].items():
        print(f"{precision} vs fp32: cosine {agreement['cosine']:.5f}, top-1 {agreement['top1_agreement']:.1%}")
    for precision, why in results["cpu_notes"].items():
        print(f"{precision} slower on this CPU: {why}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
