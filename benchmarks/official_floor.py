"""Diagnostic: how much of the plain export's latency no formulation of the token path can remove.

    python benchmarks/official_floor.py --official /tmp/official [--size 52m] [--batches 1,8] [--runs 200]
        [--threads 2] [--no-spinning] [--json results.json]

benchmarks/official_export.py compares our official-family graph ("ours") with the official code exported the plain
way ("plain"). This script times two more graphs of the same trained-like weights, each against one of those two
in a process of its own (benchmarks/ort_timing.py, paired blocks), to say what bounds that comparison:

- "no token path": ours with every Mobile->Former, Former and Former->Mobile cut. The learned tokens, plus one
  value of each image so that ONNX Runtime cannot fold the hyper-MLPs away, feed every block's DyReLU. What is
  left is what both graphs compute the same way: stem, convs, DyReLU with its hyper-MLPs, channel conv, head.
  Not a model: its ratio c to the plain export is the share of the plain export's latency that both pay.
- "shared Former weights": ours with the Formers of every block reading blocks.0's weights, the same ops on fewer
  distinct bytes (about 2.8 MB fewer for 52m). Its ratio to ours says what reading those weights costs; both
  graphs read the same ones, so a large share here would bound the token path too.

With r = ours / plain, our token path takes (r - c) / (1 - c) of the time of the plain export's; a ratio of 0.8
needs (0.8 - c) / (1 - c). Without ``--official`` the script says so and stops.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_export import (  # noqa: E402
    NUM_CLASSES,
    SEED,
    TARGETS,
    add_comparison_arguments,
    build_official_code,
    import_official,
    official_checkout_problem,
    ours_graph,
    plain_graph,
    run_conditions,
    time_as_asked,
)
from ort_timing import THREADS, paired_ratio  # noqa: E402
from trained_like import perturbed  # noqa: E402

from mfdeploy.model.official import OfficialMobileFormer, build_official_model, to_official_state_dict  # noqa: E402

TARGET = TARGETS["latency_ratio"]  # official_export.py's latency target, ours / plain


class TokensOnly(nn.Module):
    """Stands in for a Mobile->Former: returns the tokens, flat and token-major, without reading the feature map.
    The first one adds each image's first pixel value to the learned tokens, so the tokens depend on the input."""

    def __init__(self, learned: bool, token_dim: int) -> None:
        super().__init__()
        self.learned = learned
        self.token_dim = token_dim

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        if not self.learned:
            return tokens
        return (tokens[:, None] + x[:, 0, 0, 0][None, :, None]).reshape(-1, self.token_dim)


class FeatureMapOnly(nn.Module):
    """Stands in for a Former->Mobile: the feature map as it is."""

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        return x


def without_token_path(model: OfficialMobileFormer) -> OfficialMobileFormer:
    """A copy of ``model`` whose bridges and Formers are cut (see the module docstring)."""
    cut = copy.deepcopy(model)
    dim = model.cfg.token_dim
    for block in cut.blocks:
        block.to_former = TokensOnly(block.to_former.learned_tokens, dim)
        block.former = nn.Identity()
        block.to_mobile = FeatureMapOnly()
    cut.final_to_former = TokensOnly(False, dim)
    return cut


def with_shared_former_weights(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``graph`` with every block's Former Gemms reading blocks.0's weight and bias; the bytes no longer read."""
    shared = copy.deepcopy(graph)
    first: dict[str, list[str]] = {}
    for node in shared.graph.node:
        match = re.fullmatch(r"/blocks\.\d+/former/(Gemm(?:_\d+)?)", node.name)
        if match and node.op_type == "Gemm":
            inputs = first.setdefault(match.group(1), list(node.input[1:]))
            node.input[1:] = inputs
    used = {name for node in shared.graph.node for name in node.input}
    kept = [init for init in shared.graph.initializer if init.name in used]
    freed = sum(init.ByteSize() for init in shared.graph.initializer if init.name not in used)
    del shared.graph.initializer[:]
    shared.graph.initializer.extend(kept)
    return shared, freed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_comparison_arguments(parser)
    args = parser.parse_args()
    checkout = args.official.resolve() if args.official else None
    problem = official_checkout_problem(checkout)
    if problem:
        sys.exit(f"official_floor.py needs the official code to compare with: {problem}")
    torch.set_num_threads(THREADS)
    model = perturbed(build_official_model(args.size, NUM_CLASSES, 3, seed=SEED))
    results: dict[str, object] = {**run_conditions(args), "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        official = build_official_code(import_official(checkout, Path(tmp)), args.size, NUM_CLASSES)
        official.load_state_dict(to_official_state_dict(model.state_dict()), strict=True)
        ours = ours_graph(model, args.imgsz, "onnxslim")
        shared, freed = with_shared_former_weights(ours)
        graphs = {"ours": ours, "no_token_path": ours_graph(without_token_path(model), args.imgsz, "onnxslim")}
        graphs["shared_former_weights"] = shared
        results["nodes"] = {name: len(graph.graph.node) for name, graph in graphs.items()}
        results["shared_former_bytes_freed"] = freed
        paths = {name: Path(tmp) / f"{name}.onnx" for name in graphs}
        for name, graph in graphs.items():
            onnx.save(graph, str(paths[name]))
        for batch in [int(b) for b in args.batches.split(",")]:
            paths["plain"] = Path(tmp) / f"plain_b{batch}.onnx"
            onnx.save(plain_graph(official, batch, args.imgsz, "onnxslim"), str(paths["plain"]))
            row = {}
            for name, base in (("ours", "plain"), ("no_token_path", "plain"), ("shared_former_weights", "ours")):
                timed = time_as_asked([paths[name], paths[base]], batch, args)["rounds_ms"]
                row[f"{name}/{base}"] = paired_ratio(timed[str(paths[name])], timed[str(paths[base])])
            r, c = row["ours/plain"], row["no_token_path/plain"]
            # undefined when the host made the cut graph no faster than the plain export
            row["token_path_ours_over_plain"] = (r - c) / (1 - c) if c < 1 else None
            row["token_path_needed_for_target"] = (TARGET - c) / (1 - c) if c < 1 else None
            results["batches"][batch] = row
            print(f"  batch {batch} done", file=sys.stderr, flush=True)
    results["load_average_end"] = list(os.getloadavg())
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def print_table(results: dict) -> None:
    spinning = "" if results["spinning"] else ", not spinning"
    print(
        f"Official Mobile-Former {results['size']} at {results['imgsz']}px on {results['cpu']}, ONNX Runtime CPU, "
        f"{results['threads']} thread(s){spinning}, paired blocks (load average {results['load_average_start'][0]:.1f}"
        f" at the start, {results['load_average_end'][0]:.1f} at the end)"
    )
    nodes = results["nodes"]
    print(
        f"nodes: ours {nodes['ours']}, no token path {nodes['no_token_path']}; shared Former weights: "
        f"{results['shared_former_bytes_freed'] / 1e6:.1f} MB fewer distinct bytes"
    )
    print(
        f"{'batch':>5} {'ours/plain':>10} {'no token path/plain':>19} {'shared/ours':>11} "
        f"{'token path ours/plain':>21} {f'needed for {TARGET}':>14}"
    )
    for batch, row in results["batches"].items():
        shares = [row["token_path_ours_over_plain"], row["token_path_needed_for_target"]]
        ours_share, needed = ("n/a" if share is None else f"{share:.3f}" for share in shares)
        print(
            f"{batch:>5} {row['ours/plain']:>10.3f} {row['no_token_path/plain']:>19.3f} "
            f"{row['shared_former_weights/ours']:>11.3f} {ours_share:>21} {needed:>14}"
        )


if __name__ == "__main__":
    main()
