"""The data a model was trained on is recorded (checkpoint metadata ``trained_on``, manifest
``model.trained_on``), validated like every other field, and is the default data of calibrate, parity and
eval: a digits model is calibrated and checked on digits, not on photographs (issue 16).

Cheap on purpose: one real `train` on a ten-image folder; the digits model is a 26m at 32 px whose
checkpoint carries the metadata `train` writes (the same ``training_record``), exported once with
``--target trt`` (which calibrates); every run is real ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

from mfdeploy.artifacts import MANIFEST_DIGEST, MANIFEST_NAME, Artifact, manifest_digest
from mfdeploy.errors import UserError
from mfdeploy.images.choice import choose_data
from mfdeploy.images.datasets import (
    BUILTIN_DIGITS,
    folder_fingerprint,
    load_digits_data,
    load_image_folder,
    training_record,
)
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.model import build_model
from mfdeploy.model.weights import read_checkpoint, save_checkpoint

IMGSZ = 32
CALIBRATE = ("--calib-size", "16", "--precision", "int8", "--no-latency", "--json")


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code != 0 and "Traceback" not in result.err, result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def image_folder(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), (30 * i, 200 * c, 90)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A 26m with 10 classes at 32 px, saved with the metadata `mfdeploy train --data builtin-digits` writes."""
    data = load_digits_data()
    path = tmp_path_factory.mktemp("trained-data") / "digits.safetensors"
    metadata = {
        "format": "mfdeploy-checkpoint",
        "size": "26m",
        "num_classes": 10,
        "in_chans": 3,
        "classes": data.classes,
        "imgsz": IMGSZ,
        "preprocessing": Preprocessing.for_size(IMGSZ).to_dict(),
        "trained_on": training_record(data),
    }
    return save_checkpoint(build_model("26m", num_classes=10, seed=1), path, metadata)


@pytest.fixture(scope="module")
def digits_export(digits_checkpoint, tmp_path_factory):
    """`export --target trt --precision int8` without --calib-data: the export's own calibration run."""
    from mfdeploy.cli import main

    out = tmp_path_factory.mktemp("digits-export")
    args = ["export", "--weights", digits_checkpoint, "--target", "trt", "--precision", "int8"]
    try:
        main([str(a) for a in [*args, "--calib-size", "16", "--out", out]])
        code = 0
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 3)  # 3: no TensorRT on this host; the artifact is complete either way
    return out / "mobileformer_26m"


@pytest.fixture
def digits_artifact(digits_export, tmp_path) -> Path:
    copy = tmp_path / "mobileformer_26m"
    shutil.copytree(digits_export, copy)
    return copy


def with_trained_on(root: Path, trained_on) -> Path:
    """The artifact's manifest with another training record, re-signed (as a newer export would write it)."""
    path = root / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["model"]["trained_on"] = trained_on
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    return root


def test_train_records_the_folder_it_trained_on(cli, tmp_path):
    folder = image_folder(tmp_path / "data", ("a", "b"), 5)
    out = tmp_path / "f.safetensors"
    args = ("--epochs", "1", "--imgsz", str(IMGSZ), "--batch-size", "8", "--out", out)
    result = cli("train", "--data", folder, *args)
    assert result.code == 0, result.err
    record = read_checkpoint(out).metadata["trained_on"]
    assert record == {"data": str(folder), "num_classes": 2, "images": 10, "fingerprint": folder_fingerprint(folder)}
    assert record == training_record(load_image_folder(folder))
    assert training_record(load_digits_data()) == {"data": BUILTIN_DIGITS, "num_classes": 10, "images": 1797}


@pytest.mark.parametrize(
    "value",
    [
        "\x1b[31mred",
        "x" * 5000,
        3,
        {"path": "data"},
        {"data": "data", "num_classes": 0},
        {"data": "data", "fingerprint": "not hex"},
    ],
)
def test_hostile_trained_on_is_refused_in_one_line(cli, tmp_path, value):
    path = tmp_path / "hostile.safetensors"
    save_file(
        {"head.fc2.bias": build_model("26m", 10).state_dict()["head.fc2.bias"]},
        str(path),
        {"trained_on": json.dumps(value)},
    )
    with pytest.raises(UserError, match="metadata trained_on") as exc:
        read_checkpoint(path)
    assert "\n" not in str(exc.value)
    assert_one_line_error(cli("export", "--weights", path, "--out", tmp_path / "o"), "trained_on")


def test_the_manifest_records_it_and_its_schema_checks_it(digits_artifact, digits_checkpoint):
    artifact = Artifact.open(digits_artifact)
    assert artifact.manifest["model"]["trained_on"] == read_checkpoint(digits_checkpoint).metadata["trained_on"]
    assert artifact.trained_on["data"] == BUILTIN_DIGITS
    # the export's calibration (--target trt, no --calib-data) ran on the digits, not on photographs
    data = artifact.manifest["calibration"]["data"]
    assert (data["source"], data["split"], data["origin"]) == (BUILTIN_DIGITS, "train", "trained_on")
    with_trained_on(digits_artifact, "two\nlines")
    with pytest.raises(UserError, match="model.trained_on"):
        Artifact.open(digits_artifact)


def test_calibrate_defaults_to_the_training_data(cli, digits_artifact):
    default = cli("calibrate", digits_artifact, *CALIBRATE)
    assert default.code == 0, default.err
    report = default.json()
    data = report["data"]
    assert (data["source"], data["split"], data["origin"], data["note"]) == (
        BUILTIN_DIGITS,
        "train",
        "trained_on",
        None,
    )
    assert report["holdout"] == {"source": BUILTIN_DIGITS, "split": "validation"}
    assert "from builtin-digits, train split (the model's training data)" in default.err

    explicit = cli("calibrate", digits_artifact, "--calib-data", BUILTIN_DIGITS, *CALIBRATE).json()
    assert explicit["data"]["sha256"] == data["sha256"] and explicit["data"]["origin"] == "given"
    assert explicit["stats"]["reused"]  # the same images: the same statistics

    photos = cli("calibrate", digits_artifact, "--calib-data", "builtin", *CALIBRATE).json()
    assert photos["data"]["source"] == "builtin" and photos["data"]["sha256"] != data["sha256"]
    assert photos["holdout"] == {"source": "builtin"}


def test_parity_and_eval_default_to_the_training_data(cli, digits_artifact):
    result = cli("parity", digits_artifact, "--targets", "onnx", "--n", "8", "--json")
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert (data["source"], data["split"], data["origin"], data["used"]) == (
        BUILTIN_DIGITS,
        "validation",
        "trained_on",
        8,
    )
    assert "images of builtin-digits, validation split (the model's training data)" in result.err

    result = cli("eval", digits_artifact, "--targets", "onnx", "--json")
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert (data["source"], data["split"], data["origin"]) == (BUILTIN_DIGITS, "validation", "trained_on")
    assert data["images"] == len(load_digits_data().val)


def test_a_training_folder_is_used_while_it_exists(cli, digits_artifact, tmp_path):
    folder = image_folder(tmp_path / "digits", ("3", "7"), 5)
    with_trained_on(digits_artifact, training_record(load_image_folder(folder)))
    result = cli("parity", digits_artifact, "--targets", "onnx", "--n", "8", "--json")
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert (data["source"], data["origin"], data["note"]) == (str(folder), "trained_on", None)
    # eval: the images `train` held out of that folder, one of every five per class
    data = cli("eval", digits_artifact, "--targets", "onnx", "--json").json()["data"]
    assert (data["source"], data["split"], data["images"]) == (str(folder), "validation", 2)
    # a folder whose files changed since training is still the default, with a note saying so
    Image.new("RGB", (40, 40)).save(folder / "7" / "added.png")
    choice = choose_data(None, Artifact.open(digits_artifact).trained_on, "builtin")
    assert choice.spec == str(folder) and choice.from_training and "holds other files" in choice.note


def test_a_training_folder_that_is_gone_falls_back_with_a_note(cli, digits_artifact, tmp_path):
    gone = tmp_path / "moved-away"
    image_folder(gone, ("3", "7"), 5)
    with_trained_on(digits_artifact, training_record(load_image_folder(gone)))
    shutil.rmtree(gone)
    result = cli("calibrate", digits_artifact, *CALIBRATE)
    assert result.code == 0, result.err
    data = result.json()["data"]
    assert (data["source"], data["origin"]) == ("builtin", "default")
    assert data["note"] == f"the model was trained on {gone}, which no longer exists; using builtin instead"
    assert [line for line in result.err.splitlines() if "no longer exists" in line][0].startswith("warning:")
    assert os.fspath(gone) in result.err
