#!/usr/bin/env bash
# Regenerates docs/sample-report/: Mobile-Former 26m and 52m (224x224, random weights) measured on this
# machine at batch 1 and 8 with every target that runs here, merged into one Markdown + HTML report.
#
#   bash benchmarks/sample_report.sh            # about 5 minutes on 2 cores
#
# The FP16 and INT8 graphs come from `mfdeploy calibrate` (built-in photographs, minmax). TensorRT targets
# are asked for and listed as skipped with their reason (no TensorRT, no GPU here). Core ML is left out on
# purpose: off macOS its runner is the numpy MIL evaluator, whose time says nothing about a phone.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/sample-report
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
for size in 26m 52m; do
  mfdeploy export --size "$size" --out "$work"
  mfdeploy calibrate "$work/mobileformer_$size" --no-latency
  mfdeploy bench "$work/mobileformer_$size" \
    --targets torch,onnx,onnx-fp16,onnx-int8,trt-fp16,trt-int8 --batches 1,8 --threads 2 --warmup 20 --runs 200 \
    --profile --top 8 --json "$out/bench-$size.json"
done
mfdeploy report "$out/bench-26m.json" "$out/bench-52m.json" --md "$out/report.md" --html "$out/report.html"
