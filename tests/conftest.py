"""Shared fixtures: a CLI runner, and one model trained on real data per test run."""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from background import SharedJobs, run_cli, run_cli_beside_tests, session_folder

from mfdeploy.cli import main
from mfdeploy.model import SIZES
from mfdeploy.model.families import ARCHS


def _one_thread_per_worker() -> None:
    """In a pytest-xdist worker, everything runs on one thread: the workers already fill the cores.

    A second thread of ONNX Runtime's pool (its default is one per core) or of a subprocess's OpenMP does no
    work here: it spin-waits for the first, on the core another worker needs. A profile of the suite found
    about 40 CPU-seconds in ONNX Runtime's spin loop and 10 in the OpenMP threads of CLI subprocesses. So
    the worker's torch runs one thread, its ONNX Runtime sessions get one intra-op thread where the caller
    set none (what the code under test asks for, it still gets), and the processes it starts inherit
    OMP_NUM_THREADS=1.
    """
    import onnxruntime

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    init = onnxruntime.InferenceSession.__init__

    def init_one_thread(self, path_or_bytes, sess_options=None, *args, **kwargs):
        if sess_options is None:
            sess_options = onnxruntime.SessionOptions()
        if sess_options.intra_op_num_threads == 0:
            sess_options.intra_op_num_threads = 1
        init(self, path_or_bytes, sess_options, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = init_one_thread


if os.environ.get("PYTEST_XDIST_WORKER"):
    _one_thread_per_worker()
else:  # one process for the whole suite (-n 0, -p no:xdist): two threads at most
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

MAX_WORKERS = 4  # beyond this, the workers' own session fixtures cost more than they save


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: no error where it is not loaded (-p no:xdist)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (the README's test command): one worker per core, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


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


def _swept(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("swept_size") if callspec is not None else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The per-size tests run last, each size's tests together (see pytest_xdist_make_scheduler).
    Order only: no test depends on another's."""
    position = {size: index for index, size in enumerate(FAMILY_SIZES)}
    later = [item for item in items if _swept(item) is not None]
    if later:
        rest = [item for item in items if _swept(item) is None]
        items[:] = rest + sorted(later, key=lambda item: position[_swept(item)])  # stable: files keep their order


_SWEPT_IDS = {f"{arch}-{size}" for arch, size in FAMILY_SIZES}


def _work_unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: a per-size test goes with its size's other tests (so that
    one worker makes the size's shared job), any other test with its file (so that module fixtures are
    made once). Only the placement of tests depends on it, never a result."""
    path, _, rest = nodeid.partition("::")
    param = rest.rpartition("[")[2].rstrip("]") if rest.endswith("]") else ""
    return param if param in _SWEPT_IDS else path


@pytest.hookimpl(trylast=True)  # after pytest's own teardown: the file's fixtures are gone by then
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """At the end of each test file, move what outlives it into the collector's permanent generation.

    Every full collection walks the whole heap: 350,000 objects once torch, coremltools and ONNX are imported,
    twice that late in a worker's run. coremltools' convert ends in a gc.collect() and CPython starts others on
    its own: 165 of them, 86 CPU-seconds, in one run of the suite. Frozen objects are skipped by every later
    collection, and garbage made afterwards is still collected; what a file left behind is collected before
    the freeze, so nothing that is garbage then is kept for good.
    """
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        gc.freeze()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Tests are handed to the workers in work units (:func:`_work_unit`); as in xdist's loadscope, the
    units with the most tests go first, units of equal count in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFileOrSize(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ByFileOrSize(config, log)


def _train_digits(out: str) -> list:
    """The digits training, with the command's JSON output written beside the checkpoint."""
    code, stdout, err = run_cli_beside_tests(_digits_training_args(Path(out)))
    if code == 0:
        (Path(out).parent / "train_result.json").write_text(stdout)
    return [code, stdout, err]


@pytest.fixture(scope="session")
def background(request, tmp_path_factory):
    """The session's shared jobs (background.py): the digits training, its export, the default Core ML
    export and every size. The two command-line jobs start now, in the background, if a collected test
    needs them and no other process of the session has started them."""
    from size_sweep import sweep_size

    root = session_folder(tmp_path_factory.getbasetemp())
    outputs = {
        "digits": root / "trained" / "digits26m.safetensors",
        "coreml_52m": root / "coreml52m",
        "digits_export": root / "digits-artifact",
    }
    export_52m = ["export", "--size", "52m", "--target", "coreml", "--out", str(outputs["coreml_52m"]), "--json"]
    jobs = {
        "digits": (_train_digits, (str(outputs["digits"]),)),
        "coreml_52m": (run_cli_beside_tests, (export_52m,)),
        "digits_export": (_export_digits, (str(outputs["digits"]), str(outputs["digits_export"]))),
    }
    for arch, size in FAMILY_SIZES:
        jobs[f"{arch}-{size}"] = (sweep_size, (arch, size, str(root / f"{arch}-{size}")))
    queue = SharedJobs(root, jobs, outputs)
    needed = {name for item in request.session.items for name in item.fixturenames}
    in_background = {"digits": "digits_checkpoint", "coreml_52m": "coreml_52m"}  # job: the fixture that reads it
    queue.start(name for name, fixture in in_background.items() if fixture in needed)
    yield queue
    queue.close()


@pytest.fixture(scope="session")
def digits_checkpoint(background) -> Path:
    """An official-family 26m trained with `mfdeploy train` on builtin-digits (32x32, 6 epochs: ~98% validation
    accuracy in well under a minute), trained once per run, in the background. The official family is what
    users hold checkpoints of; the seed family is trained in test_training. Beside it, train_result.json
    holds the command's JSON output."""
    code, _, err = background.result("digits")
    assert code == 0, err
    return background.outputs["digits"]


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
    from size_sweep import SweptSize

    arch, size = request.param
    return SweptSize.from_json(background.result(f"{arch}-{size}"))


@pytest.fixture(scope="session")
def exported_size(swept_size):
    """The swept size's export result (its artifact has been calibrated since)."""
    return swept_size.export


def _export_digits(checkpoint: str, out: str) -> dict:
    """The digits checkpoint exported (ONNX and Core ML), with its training and validation splits
    preprocessed as .npy files beside it."""
    import numpy as np

    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.pipeline import ExportOptions, export
    from mfdeploy.images.datasets import load_digits_data

    artifact = Artifact.open(export(ExportOptions(weights=checkpoint, target="coreml", out=Path(out))).artifact)
    data = load_digits_data()
    pre = artifact.preprocessing
    np.save(Path(out) / "train.npy", pre.batch(data.train.image(i) for i in range(len(data.train))))
    np.save(Path(out) / "val.npy", pre.batch(data.val.image(i) for i in range(len(data.val))))
    return {"root": str(artifact.root)}


@pytest.fixture(scope="session")
def digits(background, digits_checkpoint):
    """The digits-trained 26m exported (ONNX and Core ML); its training split as a preprocessed .npy; its
    validation split. Made once per session (a shared job). Never change it: copy it."""
    import numpy as np

    from mfdeploy.images.datasets import load_digits_data

    made = background.result("digits_export")
    out = background.outputs["digits_export"]
    return {
        "root": Path(made["root"]),
        "train": out / "train.npy",
        "val_npy": out / "val.npy",
        "val": np.load(out / "val.npy"),
        "labels": load_digits_data().val.labels,
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
