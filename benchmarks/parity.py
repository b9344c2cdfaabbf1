"""Benchmark: `mfdeploy parity` wall time for 52m with n=64 over every backend that runs on a CPU.

    python benchmarks/parity.py [--size 52m] [--n 64] [--runs 3] [--json out.json]

The artifact (ONNX + Core ML package) is exported and calibrated once beforehand (not timed). Each timed
run is the real command in a fresh process, end to end (Python start-up and imports included), over
onnx, onnx-fp16, onnx-int8 and coreml (the numpy MIL evaluator here); the report's per-target seconds
split that up. The median and the minimum of ``--runs`` are printed with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = "onnx,onnx-fp16,onnx-int8,coreml"


def mfdeploy(*args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mfdeploy", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mfdeploy {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="52m")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfdeploy-parity-bench-") as tmp:
        out = Path(tmp)
        mfdeploy("export", "--size", args.size, "--target", "coreml", "--out", str(out))
        artifact = out / f"mobileformer_{args.size}"
        mfdeploy("calibrate", str(artifact), "--no-latency")
        walls, per_target = [], {}
        for run in range(args.runs):
            report_path = out / f"parity-{run}.json"
            command = ["parity", str(artifact), "--targets", TARGETS, "--n", str(args.n), "--json", str(report_path)]
            walls.append(mfdeploy(*command))
            for row in json.loads(report_path.read_text())["results"]:
                per_target.setdefault(row["target"], []).append(row.get("seconds"))
    results = {
        "size": args.size,
        "n": args.n,
        "targets": TARGETS,
        "wall_s": {"median": statistics.median(walls), "min": min(walls), "runs": walls},
        "per_target_s_median": {t: statistics.median(v) for t, v in per_target.items() if None not in v},
        "load_average": os.getloadavg(),
    }
    print(f"mfdeploy parity {args.size} --n {args.n} over {TARGETS}: median {results['wall_s']['median']:.1f} s,")
    print(f"min {results['wall_s']['min']:.1f} s over {args.runs} runs (load average {results['load_average']})")
    for target, seconds in results["per_target_s_median"].items():
        print(f"  {target:<10} {seconds:.2f} s (inference and comparison)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
