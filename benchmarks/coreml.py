"""Benchmark: Core ML conversion time, package size per compression mode, and MIL compute-op counts.

    python benchmarks/coreml.py [--runs 3] [--images 100] [--skip-palettize8] [--json results.json]

- Conversion time (torch.jit.trace + coremltools.convert with mfdeploy's passes, FP16, iOS16, batch 1)
  for 52m and 508m: median and minimum of ``--runs`` conversions in one process.
- 52m package size per ``--compress`` mode, with the time the compressed conversion took and the
  numpy MIL evaluator's agreement with PyTorch on ``--images`` real photographs (FP16). The evaluator
  measures numerics, not device latency.
- MIL compute ops (every op of the main function except const and constexpr_*, i.e. weights) for every
  size, with mfdeploy's graph passes and with coremltools' default pipeline alone. Counted twice:
  with the deterministic random initialisation (all LayerNorms 1/0, all biases 0, so coremltools
  merges some of them), and with every parameter perturbed so nothing coincides (the count a trained
  checkpoint gets). The official Mobile-Former 52m converts to 767 compute ops (the issue's figure;
  the official code is not part of this repository). The seed-style formulation
  (benchmarks/seed_style.py) is tried as well.
- ``--trained``: a 52m trained with ``mfdeploy train`` on builtin-digits (``--epochs``, 64x64), then
  ``mfdeploy export --target coreml`` on it; reports the export's own verification figures.

Figures depend on the machine's load: the script prints the load average it ran under.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_like import perturbed  # noqa: E402

from mfdeploy.export.coreml_convert import ConversionSpec, convert, package_bytes  # noqa: E402
from mfdeploy.export.coreml_export import CoreMLOptions  # noqa: E402
from mfdeploy.export.coreml_options import COMPRESSIONS  # noqa: E402
from mfdeploy.export.coreml_program import OFFICIAL_52M_COMPUTE_OPS, inspect_program  # noqa: E402
from mfdeploy.images.preprocess import Preprocessing  # noqa: E402
from mfdeploy.images.samples import builtin_images  # noqa: E402
from mfdeploy.metrics import compare_logits  # noqa: E402
from mfdeploy.model import SIZES, build_model  # noqa: E402
from mfdeploy.runtime.coreml_env import import_coremltools  # noqa: E402
from mfdeploy.runtime.mil_evaluator import MILEvaluator, load_program  # noqa: E402

PREPROCESSING = Preprocessing.for_size(224)


def compute_ops(model: torch.nn.Module, passes: bool) -> int:
    """Compute ops of the converted program, with mfdeploy's passes or coremltools' default pipeline."""
    ct = import_coremltools()
    spec = ConversionSpec(CoreMLOptions(), imgsz=224, in_chans=3, preprocessing=PREPROCESSING)
    if passes:
        mlmodel, _ = convert(model, spec)
    else:
        traced = torch.jit.trace(model.eval(), torch.zeros(2, 3, 224, 224))
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="images", shape=(1, 3, 224, 224), dtype=np.float32)],
            outputs=[ct.TensorType(name="logits", dtype=np.float32)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            skip_model_load=True,
        )
    return inspect_program(mlmodel._mil_program, "iOS16").compute_ops


def conversion_times(size: str, runs: int) -> dict[str, float]:
    model = build_model(size)
    spec = ConversionSpec(CoreMLOptions(), imgsz=224, in_chans=3, preprocessing=PREPROCESSING)
    seconds = [convert(model, spec)[1] for _ in range(runs)]
    return {"median_s": round(statistics.median(seconds), 2), "min_s": round(min(seconds), 2), "runs": runs}


def compression_table(images: int, skip: set[str]) -> list[dict[str, object]]:
    model = build_model("52m")
    batch = PREPROCESSING.batch(builtin_images(images))
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in COMPRESSIONS:
            if mode in skip:
                continue
            spec = ConversionSpec(CoreMLOptions(compress=mode), imgsz=224, in_chans=3, preprocessing=PREPROCESSING)
            mlmodel, seconds = convert(model, spec)
            package = Path(tmp) / f"{mode}.mlpackage"
            mlmodel.save(str(package))
            evaluator = MILEvaluator(load_program(package), "fp16")
            started = time.perf_counter()
            got = np.concatenate([evaluator.run({"images": image[None]})["logits"] for image in batch])
            per_image_ms = (time.perf_counter() - started) / len(batch) * 1e3
            figures = compare_logits(expected, got)
            rows.append(
                {
                    "mode": mode,
                    "bytes": package_bytes(package),
                    "convert_s": round(seconds, 1),
                    "top1_agreement": figures["top1_agreement"],
                    "cosine": round(figures["cosine"], 5),
                    "max_abs_error": figures["max_abs_error"],
                    "evaluator_ms_per_image": round(per_image_ms, 1),
                }
            )
            print(f"  {mode}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def seed_style_ops() -> str:
    """The seed-style formulation (traced Python ints, 5-D DyReLU) through coremltools: ops, or the error."""
    from seed_style import SeedStyleMobileFormer

    model = SeedStyleMobileFormer(build_model("52m")).eval()
    try:
        return str(compute_ops(model, passes=False))
    except Exception as exc:  # noqa: BLE001 - the failure itself is the figure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"conversion fails: {type(exc).__name__}: {first[:160]}"


def trained_52m(epochs: int) -> dict[str, object]:
    """Train a 52m with the real CLI, export it to Core ML with the real CLI, return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "digits52m.safetensors"
        train = ["train", "--size", "52m", "--data", "builtin-digits", "--epochs", str(epochs), "--imgsz", "64"]
        trained = subprocess.run(
            [sys.executable, "-m", "mfdeploy", *train, "--out", str(weights), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        started = time.perf_counter()
        exported = subprocess.run(
            [sys.executable, "-m", "mfdeploy", "export", "--weights", str(weights), "--target", "coreml"]
            + ["--out", str(Path(tmp) / "out"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - started
    coreml = json.loads(exported.stdout)["coreml"]
    return {
        "val_accuracy": json.loads(trained.stdout)["val_accuracy"],
        "export_s": round(seconds, 1),
        "compute_ops": coreml["compute_ops"],
        "labels": coreml["labels"],
        "verification": coreml["verification"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="conversions per size for the timing")
    parser.add_argument("--images", type=int, default=100, help="photographs for the agreement figures")
    parser.add_argument("--skip-palettize8", action="store_true", help="skip the slowest mode (k-means, 256 entries)")
    parser.add_argument("--trained", action="store_true", help="also train a 52m on digits and export it")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs for --trained")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load = os.getloadavg()
    results: dict[str, object] = {"load_average": [round(v, 2) for v in load]}
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)

    print("conversion time ...", file=sys.stderr)
    results["conversion"] = {size: conversion_times(size, args.runs) for size in ("52m", "508m")}
    print("package size per compression mode (52m) ...", file=sys.stderr)
    results["compression_52m"] = compression_table(args.images, {"palettize8"} if args.skip_palettize8 else set())
    print("compute ops per size ...", file=sys.stderr)
    counts = {}
    for size in SIZES:
        counts[size] = {
            "mfdeploy_random_init": compute_ops(build_model(size), passes=True),
            "mfdeploy_perturbed": compute_ops(perturbed(build_model(size)), passes=True),
            "coremltools_default_perturbed": compute_ops(perturbed(build_model(size)), passes=False),
        }
        print(f"  {size}: {counts[size]}", file=sys.stderr, flush=True)
    results["compute_ops"] = counts
    results["seed_style_52m"] = seed_style_ops()
    results["official_52m_compute_ops"] = OFFICIAL_52M_COMPUTE_OPS
    if args.trained:
        print("train a 52m on builtin-digits and export it ...", file=sys.stderr)
        results["trained_52m"] = trained_52m(args.epochs)

    print(f"\nload average when started: {' '.join(f'{v:.2f}' for v in load)}")
    print("\n| conversion (FP16, iOS16) | median | min |\n|---|---|---|")
    for size, t in results["conversion"].items():
        print(f"| {size} | {t['median_s']:.1f} s | {t['min_s']:.1f} s |")
    print("\n| 52m --compress | .mlpackage | convert | top-1 agreement (FP16) | cosine |\n|---|---|---|---|---|")
    for row in results["compression_52m"]:
        print(
            f"| {row['mode']} | {row['bytes'] / 1e6:.2f} MB | {row['convert_s']:.1f} s | "
            f"{row['top1_agreement']:.0%} | {row['cosine']:.4f} |"
        )
    print(
        "\n| size | compute ops (mfdeploy, random init) | (mfdeploy, perturbed) | "
        "(coremltools default, perturbed) |\n|---|---|---|---|"
    )
    for size, c in counts.items():
        default = c["coremltools_default_perturbed"]
        print(f"| {size} | {c['mfdeploy_random_init']} | {c['mfdeploy_perturbed']} | {default} |")
    print(f"\nofficial Mobile-Former 52m: {OFFICIAL_52M_COMPUTE_OPS}; seed-style 52m: {results['seed_style_52m']}")
    if args.trained:
        trained = results["trained_52m"]
        print(
            f"\ntrained 52m (digits, val accuracy {trained['val_accuracy']:.1%}), export {trained['export_s']:.0f} s:"
        )
        for name, e in trained["verification"]["evaluations"].items():
            print(f"  {name}: max abs error {e['max_abs_error']:.2e}, top-1 agreement {e['top1_agreement']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
