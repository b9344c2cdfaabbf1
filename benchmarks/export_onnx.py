"""Benchmark: our 52m ONNX graph against PyTorch eager and a literal seed-style export.

    python benchmarks/export_onnx.py [--size 52m] [--runs 200] [--json results.json]

Side by side in one process, in alternating blocks so that machine noise hits every candidate alike:
ONNX Runtime CPU (2 threads) on the graph `mfdeploy export` writes (dynamic batch), PyTorch eager
(2 threads) on the same weights, and the seed-style formulation (per-head Linear loop, 5-D DyReLU;
benchmarks/seed_style.py) exported the plain way with the same weights. The seed-style model cannot
be exported with a dynamic batch (its traced Python ints fix the batch), so it is exported at each
measured batch size, with the same exporter and simplifier as ours. Also times the whole
`mfdeploy export` command (export, simplify, checks, verification) in a fresh process.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timing import THREADS, interleaved_medians, session  # noqa: E402

from mfdeploy.export import onnx_export  # noqa: E402
from mfdeploy.model import build_model  # noqa: E402
from seed_style import SeedStyleMobileFormer  # noqa: E402


def seed_style_graph(model: torch.nn.Module, batch: int, imgsz: int, simplifier: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SeedStyleMobileFormer(model).eval(),
            (torch.zeros(batch, 3, imgsz, imgsz),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["logits"],
        )
    return onnx_export.simplify(onnx.load_from_string(buffer.getvalue()), simplifier)


def export_wall_time(size: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "mfdeploy", "export", "--size", size, "--out", out], check=True, capture_output=True
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="52m")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--simplifier", default="onnxslim")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    model = build_model(args.size)
    ours = onnx_export.torch_to_onnx(model, args.imgsz, None, 17)
    ours, _ = onnx_export.pin_reshape_shapes(ours)
    ours = onnx_export.simplify(ours, args.simplifier)
    ours_session = session(ours)
    results = {
        "size": args.size,
        "imgsz": args.imgsz,
        "threads": THREADS,
        "simplifier": args.simplifier,
        "ours_nodes": len(ours.graph.node),
        "batches": {},
    }
    for batch in [int(b) for b in args.batches.split(",")]:
        seed_graph = seed_style_graph(model, batch, args.imgsz, args.simplifier)
        seed_session = session(seed_graph)
        x = np.random.default_rng(0).standard_normal((batch, 3, args.imgsz, args.imgsz)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            reference = model(xt).numpy()
        for name, sess in (("ours", ours_session), ("seed-style", seed_session)):
            error = float(np.abs(sess.run(None, {"images": x})[0] - reference).max())
            assert error < 1e-4, f"{name} graph differs from PyTorch by {error}"

        def torch_eager(xt=xt):
            with torch.inference_mode():
                model(xt)

        medians = interleaved_medians(
            {
                "onnxruntime (ours)": lambda x=x: ours_session.run(None, {"images": x}),
                "onnxruntime (seed-style)": lambda s=seed_session, x=x: s.run(None, {"images": x}),
                "torch eager": torch_eager,
            },
            args.runs,
            args.warmup,
        )
        results["batches"][batch] = {
            "median_ms": medians,
            "seed_style_nodes": len(seed_graph.graph.node),
            "latency_ratio_vs_seed_style": medians["onnxruntime (ours)"] / medians["onnxruntime (seed-style)"],
            "node_ratio_vs_seed_style": len(ours.graph.node) / len(seed_graph.graph.node),
            "faster_than_torch_eager": medians["onnxruntime (ours)"] < medians["torch eager"],
        }
    results["export_command_s"] = export_wall_time(args.size)

    print(
        f"Mobile-Former {args.size} at {args.imgsz}px, {THREADS} threads, "
        f"median of {args.runs} runs in alternating blocks"
    )
    print(
        f"{'batch':>5} {'ours ms':>9} {'seed ms':>9} {'eager ms':>9} {'lat ratio':>9} "
        f"{'ours nodes':>10} {'seed nodes':>10} {'node ratio':>10}"
    )
    for batch, row in results["batches"].items():
        m = row["median_ms"]
        print(
            f"{batch:>5} {m['onnxruntime (ours)']:>9.2f} {m['onnxruntime (seed-style)']:>9.2f} "
            f"{m['torch eager']:>9.2f} {row['latency_ratio_vs_seed_style']:>9.2f} {results['ours_nodes']:>10} "
            f"{row['seed_style_nodes']:>10} {row['node_ratio_vs_seed_style']:>10.2f}"
        )
    print(f"`mfdeploy export --size {args.size}` wall time: {results['export_command_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
