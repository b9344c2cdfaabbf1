"""Benchmark: our official-family ONNX graph against the official Mobile-Former code exported the plain way.

    python benchmarks/official_export.py --official /tmp/official [--size 52m] [--runs 200] [--json results.json]
        [--weights trained-like|seed0] [--skip-coreml] [--threads 2] [--no-spinning] [--settle-s 0.1]

``--official`` is a checkout of github AAboys/MobileFormer (mobile_former.py, dna_blocks.py). That repository has
no licence, so nothing of it is in mfdeploy: its two files are imported at run time the way
tools/make_official_reference.py does it (a throwaway package with stand-ins for the timm names it imports).

- Our official family (``build_official_model``, seed 0, 1000 classes) and the official code's model of the same
  size with the same weights (``to_official_state_dict``, strict load), both in eval mode. The weights are
  trained-like by default (``--weights``): seed 0 with every parameter perturbed (benchmarks/trained_like.py).
  Seed 0 alone has every bias 0, and the simplifier drops those Adds: no trained checkpoint exports that small.
  Node counts are given for both weight sets, the target is met by the larger ratio; latency is timed with one.
- Ours exported by mfdeploy's own pipeline (TorchScript exporter, dynamic batch, opset 17, constant reshape
  targets, onnxslim); the official module exported as it is (``torch.onnx.export``, opset 17) and simplified by
  the same onnxslim. The official code's traced Python ints fix the batch, so it is exported once per measured
  batch; ours once, with a dynamic batch.
- Node counts, the largest logit difference on the same input, and ONNX Runtime CPU latency (2 threads) of both
  side by side in 20 alternating blocks each (the order reversed every other block, each block after a 0.1 s
  pause in which the other graph's ONNX Runtime threads stop spinning, and 3 warm-up calls), measured by
  benchmarks/ort_timing.py in a process of its own that loads only ONNX Runtime (this one has run PyTorch, which
  slowed both graphs, ours more). The latency ratio is the median over the blocks of ours / plain in blocks run
  moments apart: on a shared 2-core host, load that comes and goes for seconds moved a ratio of overall medians
  (5 blocks) from 0.78 to 0.95 between two consecutive runs of the same two graphs. Medians and lowest deciles of
  all runs are reported next to it. ``--threads 1``, ``--no-spinning`` or a shorter ``--settle-s`` (0: blocks
  back to back, as before the pause) time the same graphs under diagnostic conditions (see ort_timing.py), with
  no latency verdict: the target is for ONNX Runtime's default, each graph clear of the other's threads.
- The compute-op count of the Core ML ML program of our model (mfdeploy's converter and passes, FP16, iOS16),
  counted with both weight sets (seed 0 leaves all norms 1/0 and biases 0, which lets coremltools merge ops).
- The wall time of ``python -m mfdeploy export --weights <official .pth.tar> --target onnx`` in a fresh process,
  on a timm CheckpointSaver-style checkpoint of the same weights written here.

Without ``--official`` (or with a folder lacking mobile_former.py) the comparison with the official code is
skipped with one line saying why; the rest is still measured.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(ROOT / "tools"))
from make_official_reference import build as build_official_code  # noqa: E402
from make_official_reference import import_official  # noqa: E402
from ort_timing import (  # noqa: E402
    ROUNDS,
    SETTLE_S,
    THREADS,
    WARMUP,
    all_runs,
    paired_ratio,
    seconds_arg,
    session,
    time_in_fresh_process,
)
from trained_like import perturbed  # noqa: E402

from mfdeploy.export import onnx_export  # noqa: E402
from mfdeploy.model.official import build_official_model, to_official_state_dict  # noqa: E402

OPSET = 17
NUM_CLASSES = 1000
SEED = 0
WEIGHT_SETS = ("trained-like", "seed0")  # seed 0 perturbed (benchmarks/trained_like.py), or seed 0 as it is
AGREEMENT_TOLERANCE = 1e-4  # float32 logits of two exports of the same weights
TARGETS = {
    "node_ratio": 0.7,  # ours / plain, after the same simplifier
    "latency_ratio": 0.8,  # ours / plain, ONNX Runtime CPU, paired by block (see paired_ratio), at every batch
    "coreml_compute_ops": {"52m": 550},  # per size; sizes without a target report the count only
    "export_command_s": 15.0,
}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "onnx", "onnxslim", "coremltools"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def lowest_decile(blocks: list[list[float]]) -> float:
    """The 10th percentile of all of a graph's latencies (ms): its speed when the host leaves it alone."""
    return float(np.percentile(all_runs(blocks), 10))


def official_checkout_problem(path: Path | None) -> str | None:
    """Why the plain-export comparison cannot run, or None when it can."""
    if path is None:
        return "no --official checkout given"
    missing = [name for name in ("mobile_former.py", "dna_blocks.py") if not (path / name).is_file()]
    if missing:
        return f"{path} lacks {', '.join(missing)} (not a checkout of github AAboys/MobileFormer)"
    return None


def ours_graph(model: torch.nn.Module, imgsz: int, simplifier: str) -> onnx.ModelProto:
    """The graph `mfdeploy export` writes: dynamic batch, constant reshape targets, simplified, shapes recorded."""
    graph = onnx_export.torch_to_onnx(model, imgsz, None, OPSET)
    graph, _ = onnx_export.pin_reshape_shapes(graph)
    graph = onnx_export.simplify(graph, simplifier)
    onnx_export.name_batch_axis(graph)
    return graph


def plain_graph(model: torch.nn.Module, batch: int, imgsz: int, simplifier: str) -> onnx.ModelProto:
    """The official module exported as it is (its traced ints fix the batch), then the same simplifier."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "plain.onnx"
        torch.onnx.export(
            model.eval(),
            (torch.zeros(batch, 3, imgsz, imgsz),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
        )
        graph = onnx.load(str(path))
    return onnx_export.simplify(graph, simplifier)


def coreml_compute_ops(models: dict[str, torch.nn.Module], imgsz: int) -> dict[str, object]:
    """Compute ops of our model's ML program (mfdeploy's converter and passes), as `mfdeploy export` counts them."""
    if importlib.util.find_spec("coremltools") is None:  # an optional extra: pip install 'mfdeploy[coreml]'
        return {"skipped": "Core ML op count skipped: coremltools is not installed"}
    from mfdeploy.export.coreml_convert import ConversionSpec, convert
    from mfdeploy.export.coreml_export import CoreMLOptions
    from mfdeploy.export.coreml_program import OFFICIAL_52M_COMPUTE_OPS, inspect_program
    from mfdeploy.images.preprocess import Preprocessing

    options = CoreMLOptions()
    spec = ConversionSpec(options, imgsz=imgsz, in_chans=3, preprocessing=Preprocessing.for_size(imgsz))
    counts: dict[str, object] = {"deployment_target": options.deployment_target, "precision": options.precision}
    for name, candidate in (("seed0", models["seed0"]), ("perturbed", models["trained-like"])):
        mlmodel, seconds = convert(candidate, spec)
        counts[f"compute_ops_{name}"] = inspect_program(mlmodel._mil_program, options.deployment_target).compute_ops
        counts[f"convert_s_{name}"] = round(seconds, 1)
    counts["official_52m_compute_ops"] = OFFICIAL_52M_COMPUTE_OPS
    return counts


def write_official_checkpoint(model: torch.nn.Module, size: str, path: Path) -> None:
    """An official-format checkpoint as timm's CheckpointSaver writes it (mobile-former-<size>.pth.tar)."""
    arch = f"mobile_former_{size}"
    torch.save(
        {
            "epoch": 449,
            "arch": arch,
            "state_dict": to_official_state_dict(model.state_dict()),
            "optimizer": {},
            "version": 2,
            "args": argparse.Namespace(model=arch, num_classes=NUM_CLASSES, epochs=450, lr=0.0009, batch_size=128),
        },
        path,
    )


def export_command(checkpoint: Path) -> dict[str, object]:
    """Wall time of `mfdeploy export --weights <checkpoint> --target onnx` in a fresh process (this checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "mfdeploy", "export", "--weights", str(checkpoint), "--target", "onnx"]
        start = time.perf_counter()
        done = subprocess.run([*command, "--out", out], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    result: dict[str, object] = {"seconds": round(seconds, 2), "returncode": done.returncode}
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        result["error"] = lines[-1].strip() if lines else f"exit status {done.returncode}"
    return result


def verdict(value: float | None, limit: float) -> dict[str, object]:
    return {"value": value, "target": f"<= {limit}", "pass": value is not None and value <= limit}


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this script shares with official_floor.py: the official checkout, the model, the timing."""
    parser.add_argument("--official", type=Path, help="checkout of github AAboys/MobileFormer (mobile_former.py)")
    parser.add_argument("--size", default="52m")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="warm-up calls per graph, over its blocks")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating blocks per graph")
    parser.add_argument(
        "--settle-s",
        type=seconds_arg,
        default=SETTLE_S,
        help=f"pause before each block, for the other graph's threads to stop spinning (below {SETTLE_S}: no verdict)",
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help=f"ONNX Runtime intra-op threads (the target: {THREADS})"
    )
    parser.add_argument(
        "--no-spinning",
        action="store_true",
        help="idle ONNX Runtime threads sleep (diagnostic: steadier ratios on a shared host, no latency verdict)",
    )
    parser.add_argument("--json", type=Path)


def run_conditions(args: argparse.Namespace) -> dict[str, object]:
    """What a result depends on besides the graphs: the options of :func:`add_comparison_arguments`, the host."""
    return {
        "size": args.size,
        "imgsz": args.imgsz,
        "threads": args.threads,
        "spinning": not args.no_spinning,
        "runs": args.runs,
        "warmup": args.warmup,
        "settle_s": args.settle_s,
        "cpu": cpu_name(),
        "load_average_start": list(os.getloadavg()),
        "versions": versions(),
    }


def under_latency_target_conditions(threads: int, spinning: bool, settle_s: float) -> bool:
    """Whether a run timed what the latency target is for: ONNX Runtime's default, THREADS spinning threads,
    each graph's blocks clear of the other's spinning threads (``--threads 1``, ``--no-spinning`` and a shorter
    ``--settle-s`` are diagnostic conditions, with no verdict)."""
    return threads == THREADS and spinning and settle_s >= SETTLE_S


def time_as_asked(graphs: list[Path], batch: int, args: argparse.Namespace) -> dict[str, dict]:
    """ort_timing.py's result for ``graphs`` at ``batch``, in a fresh process, with the options of
    :func:`add_comparison_arguments`."""
    return time_in_fresh_process(
        graphs,
        batch,
        args.imgsz,
        args.runs,
        args.warmup,
        args.rounds,
        args.threads,
        not args.no_spinning,
        args.settle_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_comparison_arguments(parser)
    parser.add_argument("--simplifier", default="onnxslim")
    parser.add_argument(
        "--weights", choices=WEIGHT_SETS, default="trained-like", help="the weights timed (both are counted)"
    )
    parser.add_argument("--skip-coreml", action="store_true", help="leave out the Core ML op count")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    batches = [int(b) for b in args.batches.split(",")]
    checkout = args.official.resolve() if args.official else None
    skip_reason = official_checkout_problem(checkout)
    if skip_reason:
        print(f"skipping the plain-export comparison with the official code: {skip_reason}")

    seed0 = build_official_model(args.size, NUM_CLASSES, 3, seed=SEED)
    models = {"seed0": seed0, "trained-like": perturbed(copy.deepcopy(seed0))}
    model = models[args.weights]
    ours_by_weights = {name: ours_graph(candidate, args.imgsz, args.simplifier) for name, candidate in models.items()}
    ours = ours_by_weights[args.weights]
    results: dict[str, object] = {
        **run_conditions(args),
        "simplifier": args.simplifier,
        "opset": OPSET,
        "weights": args.weights,
        "ours_nodes": len(ours.graph.node),
        "ours_nodes_by_weights": {name: len(graph.graph.node) for name, graph in ours_by_weights.items()},
        "ours_batch": "dynamic (exported once)",
        "plain": None if skip_reason is None else {"skipped": skip_reason},
    }
    targets: dict[str, dict[str, object]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        if skip_reason is None:
            official = build_official_code(import_official(checkout, Path(tmp)), args.size, NUM_CLASSES)
            official.load_state_dict(to_official_state_dict(model.state_dict()), strict=True)
            ours_session = session(ours)
            ours_path = Path(tmp) / "ours.onnx"
            onnx.save(ours, str(ours_path))
            plain: dict[str, object] = {"batch": "fixed: the official code's traced ints fix it, exported per batch"}
            per_batch = {}
            for batch in batches:
                graph = plain_graph(official, batch, args.imgsz, args.simplifier)
                plain_session = session(graph)
                x = np.random.default_rng(0).standard_normal((batch, 3, args.imgsz, args.imgsz)).astype(np.float32)
                with torch.inference_mode():
                    reference = official(torch.from_numpy(x)).numpy()
                got_ours = ours_session.run(None, {"images": x})[0]
                got_plain = plain_session.run(None, {"images": x})[0]
                # timed in a process that loads only ONNX Runtime (see ort_timing.py), not in this one
                paths = {"ours": ours_path, "plain": Path(tmp) / f"plain_b{batch}.onnx"}
                onnx.save(graph, str(paths["plain"]))
                timed = time_as_asked(list(paths.values()), batch, args)
                medians = {name: timed["median_ms"][str(path)] for name, path in paths.items()}
                rounds = {name: timed["rounds_ms"][str(path)] for name, path in paths.items()}
                per_batch[batch] = {
                    "plain_nodes": len(graph.graph.node),
                    "node_ratio": len(ours.graph.node) / len(graph.graph.node),
                    "max_abs_diff_ours_vs_plain": float(np.abs(got_ours - got_plain).max()),
                    "max_abs_diff_ours_vs_official_torch": float(np.abs(got_ours - reference).max()),
                    "max_abs_logit": float(np.abs(reference).max()),
                    "median_ms": medians,
                    "p10_ms": {name: lowest_decile(blocks) for name, blocks in rounds.items()},
                    "ratio_of_medians": medians["ours"] / medians["plain"],
                    "latency_ratio": paired_ratio(rounds["ours"], rounds["plain"]),
                }
                print(
                    f"  batch {batch}: ours {medians['ours']:.2f} ms, plain {medians['plain']:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            plain["batches"] = per_batch
            plain["nodes_by_weights"] = {args.weights: per_batch[batches[0]]["plain_nodes"]}
            for name, candidate in models.items():
                if name != args.weights:
                    official.load_state_dict(to_official_state_dict(candidate.state_dict()), strict=True)
                    plain["nodes_by_weights"][name] = len(
                        plain_graph(official, 1, args.imgsz, args.simplifier).graph.node
                    )
            plain["node_ratio_by_weights"] = {
                name: len(ours_by_weights[name].graph.node) / count for name, count in plain["nodes_by_weights"].items()
            }
            results["plain"] = plain
            rows = per_batch.values()
            node_ratio = max([r["node_ratio"] for r in rows] + list(plain["node_ratio_by_weights"].values()))
            targets["node_ratio"] = verdict(node_ratio, TARGETS["node_ratio"])
            if under_latency_target_conditions(args.threads, not args.no_spinning, args.settle_s):
                for batch, row in per_batch.items():
                    targets[f"latency_ratio_b{batch}"] = verdict(row["latency_ratio"], TARGETS["latency_ratio"])
            targets["outputs_agree"] = verdict(max(r["max_abs_diff_ours_vs_plain"] for r in rows), AGREEMENT_TOLERANCE)

        if not args.skip_coreml:
            coreml = coreml_compute_ops(models, args.imgsz)
            results["coreml"] = coreml
            limit = TARGETS["coreml_compute_ops"].get(args.size)
            if limit is not None and "skipped" not in coreml:
                # the perturbed count is what a trained checkpoint converts to; it is never below the seed-0 one
                worst = max(coreml["compute_ops_seed0"], coreml["compute_ops_perturbed"])
                targets["coreml_compute_ops"] = verdict(worst, limit)

        checkpoint = Path(tmp) / f"mobile-former-{args.size}.pth.tar"
        write_official_checkpoint(model, args.size, checkpoint)
        results["export_command"] = export_command(checkpoint)
        ok = results["export_command"]["returncode"] == 0
        targets["export_command_s"] = verdict(
            results["export_command"]["seconds"] if ok else None, TARGETS["export_command_s"]
        )

    results["load_average_end"] = list(os.getloadavg())
    results["targets"] = targets
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if "outputs_agree" in targets and not targets["outputs_agree"]["pass"]:
        sys.exit(f"our graph and the official code's differ by {targets['outputs_agree']['value']:.3g}")


def print_table(results: dict, args: argparse.Namespace) -> None:
    plain = results["plain"]
    timed = bool(plain and "batches" in plain)
    spinning = "" if results["spinning"] else " (not spinning)"
    timing = (
        f", ONNX Runtime CPU, {results['threads']} thread{'s' if results['threads'] != 1 else ''}{spinning}, "
        f"{args.runs} runs each in {args.rounds} alternating blocks (each after a {args.settle_s:g} s pause and "
        f"{max(1, args.warmup // args.rounds)} warm-up calls), in a process of their own"
        if timed
        else ""
    )
    print(
        f"Official Mobile-Former {args.size} at {args.imgsz}px on {results['cpu']}{timing} (load average "
        f"{results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} at the end)"
    )
    if timed:
        ratios = plain["node_ratio_by_weights"]
        counts = [
            f"{name} {results['ours_nodes_by_weights'][name]} / {count} = {ratios[name]:.3f}"
            for name, count in plain["nodes_by_weights"].items()
        ]
        print(f"weights timed: {results['weights']} (--weights); nodes ours / plain: " + ", ".join(counts))
        print("ours: mfdeploy's pipeline, dynamic batch, exported once; plain: the official module exported as it is,")
        print("      once per batch (its traced ints fix the batch); both simplified by " + args.simplifier)
        print("ms: median of all runs (p10: lowest decile); lat ratio: ours/plain, median over the blocks of the")
        print("    ratio of the two blocks run moments apart (the target); of medians / of p10: the same from all runs")
        print(
            f"{'batch':>5} {'ours ms':>8} {'plain ms':>8} {'ours p10':>8} {'plain p10':>9} {'lat ratio':>9} "
            f"{'of medians':>10} {'of p10':>6} {'ours nodes':>10} {'plain nodes':>11} {'node ratio':>10} "
            f"{'max |diff|':>10}"
        )
        for batch, row in plain["batches"].items():
            m, p10 = row["median_ms"], row["p10_ms"]
            print(
                f"{batch:>5} {m['ours']:>8.2f} {m['plain']:>8.2f} {p10['ours']:>8.2f} {p10['plain']:>9.2f} "
                f"{row['latency_ratio']:>9.3f} {row['ratio_of_medians']:>10.3f} {p10['ours'] / p10['plain']:>6.3f} "
                f"{results['ours_nodes']:>10} {row['plain_nodes']:>11} {row['node_ratio']:>10.2f} "
                f"{row['max_abs_diff_ours_vs_plain']:>10.2e}"
            )
        if not under_latency_target_conditions(results["threads"], results["spinning"], results["settle_s"]):
            print(
                f"no latency verdict: the target is for {THREADS} spinning threads, ONNX Runtime's default, "
                f"timed after a pause of at least {SETTLE_S} s before each block"
            )
    else:
        print(
            "ours: nodes after "
            + args.simplifier
            + " (dynamic batch): "
            + ", ".join(f"{name} weights {count}" for name, count in results["ours_nodes_by_weights"].items())
        )
    coreml = results.get("coreml")
    if coreml and "skipped" in coreml:
        print(coreml["skipped"])
    elif coreml:
        print(
            f"Core ML ({coreml['precision']}, {coreml['deployment_target']}) compute ops: "
            f"{coreml['compute_ops_seed0']} with seed-0 weights, {coreml['compute_ops_perturbed']} with perturbed "
            f"(trained-like) weights; the official 52m converts to {coreml['official_52m_compute_ops']}"
        )
    export = results["export_command"]
    if export["returncode"] == 0:
        print(f"`mfdeploy export --weights <official .pth.tar> --target onnx`: {export['seconds']:.1f} s")
    else:
        print(
            f"`mfdeploy export --weights <official .pth.tar> --target onnx` failed ({export['seconds']:.1f} s): "
            f"{export['error']}"
        )
    for name, row in results["targets"].items():
        value = row["value"]
        shown = "n/a" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
        print(f"  {name:<22} {shown:>9}  target {row['target']:<8} {'PASS' if row['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
