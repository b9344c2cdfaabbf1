"""Seeded mutation fuzzing of the two documents mfdeploy reads back: checkpoint metadata and artifact
manifests. Every mutated document either loads (and everything read from it is usable) or is refused with
a UserError; any other exception is a bug, reported with the seed and the mutation that caused it.

Each loop is bounded in time (about 2 s) and seeded, so a failure names a reproducible case."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from mfdeploy.artifacts import MANIFEST_DIGEST, MANIFEST_NAME, Artifact, manifest_digest
from mfdeploy.errors import UserError
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.manifest_schema import trained_on_record
from mfdeploy.model import build_model
from mfdeploy.model.weights import check_metadata_fits, read_checkpoint

SEED = 15
SECONDS = 2.0
MIN_CASES = 30  # fewer would not be a fuzz run: the machine is too loaded to say anything
NUM_CLASSES = 10
TRAINED_ON = {"data": "/data/digits", "num_classes": NUM_CLASSES, "images": 50, "fingerprint": "0" * 64}

# values a damaged or hand-edited file plausibly holds: wrong types, edges, overflows, non-finite numbers
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    33,
    64,
    10**30,
    -(10**30),
    0.5,
    -0.0,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "abc",
    "64",
    "lanczos",
    "NCHW",
    "x" * 1000,
    "\n\x1b[31mred",
    [],
    [1],
    [0.5, 0.5],
    [0.5, 0.5, 0.5],
    [math.nan, 0.2, 0.2],
    ["a", "a"],
    [[1]],
    {},
    {"a": 1},
    {"sha256": "0" * 64},
]


def assert_trained_on(record: Any) -> None:
    """A training record as calibrate, parity and eval read it: None, or a printable path or name."""
    assert record is None or (isinstance(record["data"], str) and record["data"].isprintable()), record


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON-like document, the root's children first."""
    found: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(_paths(child, prefix + (key,)))
    return found


def _parent(document: Any, path: tuple) -> Any:
    for key in path[:-1]:
        document = document[key]
    return document


def mutate(document: dict[str, Any], rng: random.Random) -> list[str]:
    """Apply one to three random mutations in place; returns what was done, to reproduce a failure."""
    done = []
    for _ in range(rng.randint(1, 3)):
        paths = _paths(document)
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = _parent(document, path), path[-1]
        operation = rng.choice(["delete", "replace", "replace", "wrap", "duplicate"])
        if operation == "delete":
            del parent[key]
        elif operation == "replace":
            parent[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        elif operation == "wrap":
            parent[key] = [parent[key]]
        elif isinstance(parent[key], list) and parent[key]:
            parent[key].append(copy.deepcopy(parent[key][0]))
        else:
            parent[key] = {"value": parent[key]}
        done.append(f"{operation} {'/'.join(map(str, path))}")
    return done


def fuzz(check, base: dict[str, Any], seed: int) -> dict[str, int]:
    """Run ``check(mutated)`` until SECONDS pass: it must return, or raise UserError. Counts the outcomes."""
    rng = random.Random(seed)
    outcomes = {"loaded": 0, "refused": 0}
    deadline = time.monotonic() + SECONDS
    case = 0
    while time.monotonic() < deadline:
        case += 1
        document = copy.deepcopy(base)
        done = mutate(document, rng)
        try:
            check(document)
            outcomes["loaded"] += 1
        except UserError as exc:
            assert "\n" not in str(exc), f"seed {seed} case {case} ({'; '.join(done)}): {exc}"
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - any other exception is the bug this test looks for
            pytest.fail(f"seed {seed} case {case} ({'; '.join(done)}) raised {type(exc).__name__}: {exc}")
    assert sum(outcomes.values()) >= MIN_CASES, outcomes
    return outcomes


# -- checkpoint metadata -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return build_model("26m", num_classes=NUM_CLASSES, seed=5)


def test_fuzzed_checkpoint_metadata_loads_or_is_refused(model, tmp_path):
    """Mutated metadata written to a real .safetensors, read back, and used the way export uses it."""
    base = {
        "format": "mfdeploy-checkpoint",
        "size": "26m",
        "num_classes": NUM_CLASSES,
        "in_chans": 3,
        "classes": [str(i) for i in range(NUM_CLASSES)],
        "imgsz": 64,
        "preprocessing": Preprocessing.for_size(64).to_dict(),
        "trained_on": TRAINED_ON,
        "val_accuracy": 0.9,
    }
    path = tmp_path / "fuzz.safetensors"
    tensors = {"head.fc2.bias": torch.zeros(NUM_CLASSES)}  # reading is what is fuzzed: a small file is enough

    def check(metadata: dict[str, Any]) -> None:
        save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
        read = read_checkpoint(path).metadata
        check_metadata_fits(read, model, path)
        if isinstance(read.get("preprocessing"), dict):
            pre = Preprocessing.from_dict(read["preprocessing"])
            assert pre.imgsz % 32 == 0 and pre.resize >= pre.imgsz and len(pre.mean) == len(pre.std) == 3
        classes = read.get("classes")
        assert classes is None or (len(classes) == NUM_CLASSES and len(set(classes)) == NUM_CLASSES)
        assert_trained_on(trained_on_record(read.get("trained_on")))

    outcomes = fuzz(check, base, SEED)
    assert outcomes["refused"] and outcomes["loaded"], outcomes


# -- manifests ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact_root(small_export) -> Path:
    """The run's shared 26m/64px/10-class export (conftest); only read, the fuzzing mutates copies."""
    assert Artifact.open(small_export).num_classes == NUM_CLASSES
    return small_export


def read_everything(artifact: Artifact) -> None:
    """What the commands read from an opened artifact; each value must be usable as its type says."""
    imgsz, num_classes, in_chans = artifact.imgsz, artifact.num_classes, artifact.in_chans
    assert isinstance(artifact.size, str) and artifact.size
    assert imgsz % 32 == 0 and 1 <= num_classes and 1 <= in_chans
    pre = artifact.preprocessing
    assert pre.imgsz == imgsz and all(math.isfinite(v) for v in (*pre.mean, *pre.std))
    assert isinstance(artifact.input_name, str) and isinstance(artifact.output_name, str)
    batch = artifact.static_batch
    assert batch is None or (isinstance(batch, int) and batch >= 1)
    assert set(artifact.calibrated_precisions) <= {"int8", "fp16"}
    assert_trained_on(artifact.trained_on)
    assert isinstance(artifact.has("model.onnx"), bool)


def test_fuzzed_manifests_open_or_are_refused(artifact_root, tmp_path):
    """Mutated manifests in a copy of a real artifact, through Artifact.open and every property read."""
    copy_root = tmp_path / "artifact"
    shutil.copytree(artifact_root, copy_root, copy_function=os.link)
    manifest_path = copy_root / MANIFEST_NAME
    manifest_path.unlink()  # a fresh file: never write through the link into the original
    base = json.loads((artifact_root / MANIFEST_NAME).read_text())
    base["model"]["classes"] = [f"c{i}" for i in range(NUM_CLASSES)]
    base["model"]["trained_on"] = TRAINED_ON

    def check(manifest: dict[str, Any]) -> None:
        # re-signed, so that the schema is what is fuzzed (an unsigned edit stops at the digest check)
        manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
        manifest_path.write_text(json.dumps(manifest))
        read_everything(Artifact.open(copy_root))

    outcomes = fuzz(check, base, SEED)
    assert outcomes["refused"] and outcomes["loaded"], outcomes


def test_the_mutations_reach_every_field(artifact_root):
    """The fuzzer is only as good as its reach: every leaf of a real manifest is a mutation target."""
    manifest = json.loads((artifact_root / MANIFEST_NAME).read_text())
    reached = {"/".join(map(str, p)) for p in _paths(manifest)}
    for field in ("model/imgsz", "model/num_classes", "preprocessing/mean/2", "inputs/0/shape/0", "files"):
        assert field in reached
