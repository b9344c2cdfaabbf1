"""An artifact is a folder the user grows: a second `export` into it keeps what is there and adds what its
target needs; `--force` remakes only what the export makes; another model is refused, naming the difference.

Each test starts from a private copy of the small 26m artifact (64 px, 10 classes, random weights, seed 0).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from conftest import SMALL_NUM_CLASSES
from mfdeploy.artifacts import Artifact
from mfdeploy.runtime.registry import TARGETS


def _same_model(artifact: Path) -> list[str]:
    return ["--size", "26m", "--imgsz", "64", "--num-classes", str(SMALL_NUM_CLASSES), "--out", str(artifact.parent)]


def _state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256), the manifest included."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _calibrated(cli, artifact: Path, precision: str = "fp16") -> None:
    result = cli("calibrate", artifact, "--calib-size", "8", "--precision", precision, "--no-latency")
    assert result.code == 0, result.err


def test_the_same_export_again_changes_nothing_and_says_so(cli, small_artifact):
    before = _state(small_artifact)
    result = cli("export", *_same_model(small_artifact), "--json", "-")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["mode"] == "unchanged" and "nothing to add" in report["message"]
    assert _state(small_artifact) == before


def test_another_model_is_refused_in_one_line_naming_the_difference(cli, small_artifact):
    _calibrated(cli, small_artifact)
    before = _state(small_artifact)
    result = cli("export", *_same_model(small_artifact), "--seed", "3", "--target", "trt")
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.err
    assert "random (seed 0)" in errors[0] and "random (seed 3)" in errors[0] and "--force" in errors[0]
    assert "model.fp16.onnx" in errors[0]  # says what replacing it would take with it
    assert _state(small_artifact) == before


def test_trt_target_adds_its_graph_and_keeps_everything_already_there(cli, small_artifact):
    _calibrated(cli, small_artifact, "fp16")
    (small_artifact / "notes.txt").write_text("the user's own notes\n")
    before = _state(small_artifact)

    result = cli("export", *_same_model(small_artifact), "--target", "trt", "--precision", "int8", "--calib-size", "8")
    assert result.code == 3, result.err  # the graphs are written; TensorRT itself is missing here
    after = _state(small_artifact)
    for name, digest in before.items():
        if name != "manifest.json" and not name.startswith("calibration"):  # the reports are the latest run's
            assert after.get(name) == digest, f"{name} changed or went missing"
    artifact = Artifact.open(small_artifact)
    assert set(artifact.calibrated_precisions) == {"fp16", "int8"}
    assert artifact.file_status("model.fp16.onnx") == "ok" and artifact.file_status("model.int8.onnx") == "ok"
    assert "added trt" in result.out and "kept model.onnx" in result.out
    # the summary has the new graph's figures and every timed step, the calibration inside the stage included
    assert "TensorRT graph: model.int8.onnx vs FP32" in result.out and "cosine" in result.out
    assert "precision census on an FP16 base: compute nodes INT8" in result.out
    took = next(line for line in result.out.splitlines() if line.strip().startswith("took "))
    assert "trt " in took and "calibrate " in took and "lint " in took, took


def test_trt_target_keeps_a_calibrated_graph_unless_asked_to_calibrate(cli, small_artifact):
    _calibrated(cli, small_artifact, "fp16")
    graph = _state(small_artifact)["model.fp16.onnx"]
    result = cli("export", *_same_model(small_artifact), "--target", "trt", "--precision", "fp16")
    assert result.code == 3, result.err
    assert "kept model.fp16.onnx" in result.err
    assert _state(small_artifact)["model.fp16.onnx"] == graph


def test_force_remakes_the_graph_and_keeps_what_was_made_from_the_same_model(cli, small_artifact):
    _calibrated(cli, small_artifact, "fp16")
    (small_artifact / "notes.txt").write_text("mine\n")
    before = _state(small_artifact)
    result = cli("export", *_same_model(small_artifact), "--force", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["mode"] == "remake"
    after = _state(small_artifact)
    assert after["model.onnx"] == before["model.onnx"]  # the same model exports to the same bytes
    for name in ("notes.txt", "model.fp16.onnx", "calibration.json"):
        assert after[name] == before[name], name
    assert Artifact.open(small_artifact).calibrated_precisions == ("fp16",)


def test_force_over_another_model_replaces_its_files_but_not_the_users(cli, small_artifact):
    _calibrated(cli, small_artifact, "fp16")
    (small_artifact / "notes.txt").write_text("mine\n")
    result = cli("export", *_same_model(small_artifact), "--seed", "3", "--force")
    assert result.code == 0, result.err
    names = {p.name for p in small_artifact.iterdir()}
    assert "notes.txt" in names and "model.fp16.onnx" not in names
    assert "model.fp16.onnx" in result.out  # the summary names what went with the old model
    artifact = Artifact.open(small_artifact)
    assert artifact.manifest["model"]["source"] == {"weights": "random", "seed": 3}
    assert artifact.calibrated_precisions == ()


def test_force_over_a_folder_that_is_no_artifact_keeps_the_users_files(cli, tmp_path):
    target = tmp_path / "mobileformer_26m"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    result = cli("export", "--size", "26m", "--imgsz", "64", "--num-classes", "10", "--out", tmp_path, "--force")
    assert result.code == 0, result.err
    assert (target / "keep.txt").read_text() == "user data"
    assert Artifact.open(target).file_status("model.onnx") == "ok"


def test_the_command_a_missing_target_names_works_as_written(cli, small_artifact):
    """The hint for a missing precision graph (bench, eval, parity's skips) is a command that makes it."""
    artifact = Artifact.open(small_artifact)
    hint = TARGETS["onnx-fp16"].make_command(artifact)
    assert hint.startswith("mfdeploy calibrate ")
    made = cli(*shlex.split(hint)[1:], "--calib-size", "8", "--no-latency")
    assert made.code == 0, made.err
    assert "fp16" in Artifact.open(small_artifact).calibrated_precisions
    # the Core ML target's hint is the artifact's own export with --target coreml: an export that grows
    # this folder (tests/test_coreml.py runs such a growth end to end)
    coreml = shlex.split(TARGETS["coreml"].make_command(artifact))
    assert coreml[:2] == ["mfdeploy", "export"]
    assert coreml[coreml.index("--target") + 1] == "coreml"
    assert coreml[coreml.index("--out") + 1] == str(small_artifact.parent)
    assert "--force" not in coreml  # adding a package the artifact lacks replaces nothing


def test_parity_adds_the_core_ml_package_its_targets_need(cli, small_artifact):
    """parity on an artifact without a package grows it (grow_artifact) instead of skipping the target."""
    before = _state(small_artifact)
    result = cli("parity", small_artifact, "--targets", "onnx,coreml", "--n", "4", "--json", "-")
    assert result.code == 0, result.err
    statuses = {r["target"]: r["status"] for r in json.loads(result.out)["results"]}
    assert statuses == {"onnx": "passed", "coreml": "passed"}
    artifact = Artifact.open(small_artifact)
    assert artifact.file_status("model.mlpackage") == "ok"
    after = _state(small_artifact)
    assert {name: after[name] for name in before if name != "manifest.json"} == {
        name: digest for name, digest in before.items() if name != "manifest.json"
    }
