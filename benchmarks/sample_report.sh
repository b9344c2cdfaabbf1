#!/usr/bin/env bash
# Regenerates docs/sample-report/: Mobile-Former 26m and 52m (224x224, random weights) measured on this
# machine at batch 1 and 8 with every target that runs here, merged into one Markdown + HTML report.
#
#   bash benchmarks/sample_report.sh            # about 2-3 minutes on 2 cores
#
# Targets that cannot run here (no fp16/int8 graph in the artifact yet, no TensorRT, no macOS) are listed
# as skipped with their reason. Once the fp16/int8 graphs can be exported, add the command that makes
# them to EXTRA_EXPORT below so the artifacts carry them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/sample-report
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
EXTRA_EXPORT=()  # e.g. (mfdeploy export --target trt ...), run with --size and --out like the export below

for size in 26m 52m; do
  mfdeploy export --size "$size" --out "$work"
  if [ ${#EXTRA_EXPORT[@]} -gt 0 ]; then "${EXTRA_EXPORT[@]}" --size "$size" --out "$work" --force; fi
  mfdeploy bench "$work/mobileformer_$size" \
    --targets torch,onnx,onnx-fp16,onnx-int8,coreml --batch 1,8 --threads 2 --warmup 20 --runs 200 \
    --profile --top 8 --json "$out/bench-$size.json"
done
mfdeploy report "$out/bench-26m.json" "$out/bench-52m.json" --md "$out/report.md" --html "$out/report.html"
