"""Shared fixtures: a CLI runner, and one model trained on real data per test run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from background import run_cli

from mfdeploy.cli import main
from mfdeploy.model import SIZES
from mfdeploy.model.families import ARCHS

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


DIGITS_EPOCHS = 6  # the digits_checkpoint fixture's training
DIGITS_IMGSZ = 32


@pytest.fixture
def cli(capsys):
    """Run `mfdeploy ARGS` in-process and return its exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path | None = None) -> CliResult:
    """Run the real console entry point in a fresh interpreter (what a user's shell does)."""
    return CliResult(*run_cli([str(a) for a in args], cwd=cwd))


def _digits_training_args(out: Path) -> list[str]:
    return [
        "train", "--arch", "official", "--size", "26m", "--data", "builtin-digits",
        "--epochs", str(DIGITS_EPOCHS), "--imgsz", str(DIGITS_IMGSZ), "--out", str(out), "--json",
    ]  # fmt: skip


FAMILY_SIZES = [(arch, size) for arch in ARCHS for size in SIZES]  # every size of both families
_BACKGROUND_FIXTURES = {"digits_checkpoint", "coreml_52m", "swept_size"}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The per-size tests run last, largest sizes first. The background worker makes the sizes in
    FAMILY_SIZES order while the other tests run; at the end the test process takes the sizes no worker
    has started yet from the other end of the queue, so that both cores stay busy until the sweep is done
    and neither waits for a size the other is making. Order only: no test depends on another's."""
    position = {size: index for index, size in enumerate(FAMILY_SIZES)}

    def swept(item: pytest.Item) -> int | None:
        callspec = getattr(item, "callspec", None)
        size = callspec.params.get("swept_size") if callspec is not None else None
        return None if size is None else position[size]

    later = [item for item in items if swept(item) is not None]
    if later:
        rest = [item for item in items if swept(item) is None]
        items[:] = rest + sorted(later, key=lambda item: -swept(item))  # stable: files keep their order per size


@pytest.fixture(scope="session", autouse=True)
def _coreml_validates_once():
    """In-process Core ML conversions validate their program once, not after every pass (coreml_validation)."""
    from coreml_validation import validate_once

    with validate_once():
        yield


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The jobs the collected tests need, queued with the session to a worker process (background.py), in
    the order the tests first need them: the digits training, the default Core ML export, then every size."""
    from background import Background, run_cli_beside_tests
    from size_sweep import sweep_size

    items = request.session.items
    needed = {name for item in items for name in item.fixturenames}
    root = tmp_path_factory.mktemp("background")
    outputs = {"digits": root / "trained" / "digits26m.safetensors", "coreml_52m": root / "coreml52m"}
    jobs = []
    if "digits_checkpoint" in needed:
        jobs.append(("digits", run_cli_beside_tests, (_digits_training_args(outputs["digits"]),)))
    if "coreml_52m" in needed:
        export_52m = ["export", "--size", "52m", "--target", "coreml", "--out", str(outputs["coreml_52m"]), "--json"]
        jobs.append(("coreml_52m", run_cli_beside_tests, (export_52m,)))
    swept = {item.callspec.params["swept_size"] for item in items if "swept_size" in item.fixturenames}
    for arch, size in (s for s in FAMILY_SIZES if s in swept):
        jobs.append(((arch, size), sweep_size, (arch, size, str(root / f"{arch}-{size}"))))
    alone = all(_BACKGROUND_FIXTURES & set(item.fixturenames) for item in items)
    queue = Background(jobs, alone=alone, outputs=outputs)
    yield queue
    queue.close()


@pytest.fixture(scope="session")
def digits_checkpoint(background) -> Path:
    """An official-family 26m trained with `mfdeploy train` on builtin-digits (32x32, 6 epochs: ~98% validation
    accuracy in well under a minute), trained once per run, in the background. The official family is what
    users hold checkpoints of; the seed family is trained in test_training. Beside it, train_result.json
    holds the command's JSON output."""
    code, out, err = background.result("digits")
    assert code == 0, err
    checkpoint = background.outputs["digits"]
    (checkpoint.parent / "train_result.json").write_text(out)
    return checkpoint


@pytest.fixture(scope="session")
def coreml_52m(background):
    """`mfdeploy export --size 52m --target coreml --json` (the README's default model with its Core ML
    package), run once in its own process, in the background: (out folder, JSON result, stderr). Never
    change it: copy it."""
    code, out, err = background.result("coreml_52m")
    assert code == 0, err
    return background.outputs["coreml_52m"], json.loads(out), err


@pytest.fixture(scope="session", params=FAMILY_SIZES, ids=[f"{arch}-{size}" for arch, size in FAMILY_SIZES])
def swept_size(request, background):
    """One size of one family (64 px, dynamic batch, random weights): exported, calibrated on 8 images and
    converted to Core ML, for the tests that cover all sizes (size_sweep.SweptSize)."""
    return background.result(request.param)


@pytest.fixture(scope="session")
def exported_size(swept_size):
    """The swept size's export result (its artifact has been calibrated since)."""
    return swept_size.export


@pytest.fixture(scope="session")
def digits(tmp_path_factory, digits_checkpoint):
    """The digits-trained 26m exported (ONNX and Core ML); its training split as a preprocessed .npy; its
    validation split."""
    import numpy as np

    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.pipeline import ExportOptions, export
    from mfdeploy.images.datasets import load_digits_data

    out = tmp_path_factory.mktemp("digits-artifact")
    artifact = Artifact.open(export(ExportOptions(weights=str(digits_checkpoint), target="coreml", out=out)).artifact)
    data = load_digits_data()
    pre = artifact.preprocessing
    train = pre.batch(data.train.image(i) for i in range(len(data.train)))
    np.save(out / "train.npy", train)
    val = pre.batch(data.val.image(i) for i in range(len(data.val)))
    np.save(out / "val.npy", val)
    return {
        "root": artifact.root,
        "train": out / "train.npy",
        "val_npy": out / "val.npy",
        "val": val,
        "labels": data.val.labels,
    }


SMALL_NUM_CLASSES = 10


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> Path:
    """A 26m at 64 px with 10 classes (random weights, dynamic batch), exported once per run for tests that
    only need some valid artifact. Never change it: copy it with the ``small_artifact`` fixture."""
    from mfdeploy.export.pipeline import ExportOptions, export

    out = tmp_path_factory.mktemp("small-export")
    return export(ExportOptions(size="26m", imgsz=64, num_classes=SMALL_NUM_CLASSES, out=out)).artifact


@pytest.fixture
def small_artifact(small_export, tmp_path) -> Path:
    """A private copy of :func:`small_export` that a test may change, break or calibrate."""
    import shutil

    copy = tmp_path / "out" / small_export.name
    shutil.copytree(small_export, copy)
    return copy
