"""`mfdeploy predict`: real photographs through the shared small artifact's real PyTorch and ONNX Runtime
targets; labels, probabilities, agreement, skipped targets, and one line for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import SMALL_NUM_CLASSES, run_subprocess
from mfdeploy.artifacts import Artifact
from mfdeploy.images.preprocess import load_image
from mfdeploy.parity.options import PredictOptions
from mfdeploy.parity.predict import run_predict, softmax
from mfdeploy.runtime.registry import create_runner
from mfdeploy.runtime.tensorrt_env import tensorrt_unavailable_reason
from mfdeploy.thresholds import UNTRAINED_LABELS_NOTE

EXIF_ORIENTATION = 0x0112
# class names as a checkpoint from `mfdeploy train` would carry them, some that look like rich markup or emoji
# (six of ten, so every top 5 shows at least one)
CLASS_NAMES = [
    "[red]cat[/]",
    "dog",
    "[b]coffee cup",
    "rocket",
    "astronaut [/]",
    "camera",
    ":coin:",
    "moon",
    "[i]brick",
    "page",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of real photographs in the forms users have them: JPEG, greyscale PNG, RGBA PNG, a sideways
    PNG whose EXIF says to turn it upright (next to the same picture stored upright), and one broken file."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.jpg", quality=90)
    Image.fromarray(skimage.data.camera()).save(folder / "camera.png")  # mode L
    Image.fromarray(skimage.data.coffee()).convert("RGBA").save(folder / "coffee.png")
    cat = Image.fromarray(skimage.data.chelsea())
    cat.save(folder / "chelsea_upright.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display": stored turned the other way
    cat.transpose(Image.Transpose.ROTATE_90).save(folder / "chelsea_sideways.png", exif=exif.tobytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


@pytest.fixture(scope="module")
def named_artifact(small_export, tmp_path_factory) -> Path:
    """A copy of the shared artifact whose manifest names its classes, as an export from a checkpoint with
    class names writes it (saved through Artifact, so its digest is right)."""
    root = tmp_path_factory.mktemp("named") / small_export.name
    shutil.copytree(small_export, root)
    artifact = Artifact.open(root)
    artifact.manifest["model"]["classes"] = CLASS_NAMES
    artifact.save()
    return root


def by_name(report: dict) -> dict[str, dict]:
    return {row["target"]: row for row in report["targets"]}


def test_torch_and_onnx_agree_on_real_photographs(cli, small_export, photos):
    result = cli("predict", small_export, photos, "--top", str(SMALL_NUM_CLASSES), "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["schema_version"] == 1 and report["reference"] == "torch"
    # the defaults: torch and onnx, and nothing the artifact does not hold (no calibration, no export)
    assert [row["target"] for row in report["targets"]] == ["torch", "onnx"]
    assert all(row["status"] == "ok" for row in report["targets"])
    assert not (small_export / "model.int8.onnx").exists()
    # the broken file is skipped and counted; the folder's five readable photographs remain
    assert report["data"] == {"images": 5, "skipped_files": 1}
    assert "skipped 1 unreadable" in result.err and "broken.jpg" in result.err
    paths = [Path(image["path"]).name for image in report["images"]]
    assert paths == sorted(["astronaut.jpg", "camera.png", "coffee.png", "chelsea_upright.png", "chelsea_sideways.png"])

    assert report["class_names"] is False and report["top"] == SMALL_NUM_CLASSES
    for image in report["images"]:
        assert set(image["predictions"]) == {"torch", "onnx"}
        for ranked in image["predictions"].values():
            probabilities = [p["probability"] for p in ranked]
            assert len(ranked) == SMALL_NUM_CLASSES and sorted({p["index"] for p in ranked}) == list(range(10))
            assert probabilities == sorted(probabilities, reverse=True) and all(0 < p < 1 for p in probabilities)
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)  # every class shown: the whole softmax
            assert all(p["label"] == str(p["index"]) for p in ranked)  # no class names: the index
        torch_best, onnx_best = image["predictions"]["torch"], image["predictions"]["onnx"]
        assert torch_best[0]["index"] == onnx_best[0]["index"]
        assert [p["probability"] for p in onnx_best] == pytest.approx([p["probability"] for p in torch_best], abs=1e-5)
        assert image["agreement"] == {"onnx": {"top1_agrees": True, "top_k_overlap": 1.0}}
    assert report["agreement"]["all_top1_agree"] is True
    assert report["agreement"]["targets"]["onnx"] == {
        "images": 5,
        "top1_agreeing": 5,
        "top1_agreement": 1.0,
        "mean_top_k_overlap": 1.0,
    }

    # EXIF orientation is applied: the sideways file is the upright picture, pixel for pixel
    images = {Path(image["path"]).name: image["predictions"]["torch"] for image in report["images"]}
    assert images["chelsea_sideways.png"] == images["chelsea_upright.png"]
    # grey and RGBA photographs are read too, and give their own answer, not the cat's
    assert images["camera.png"] != images["coffee.png"] != images["chelsea_upright.png"]

    # random weights: one note that the labels mean nothing, in the JSON and once in the summary (stderr here)
    assert report["untrained"] is True and report["untrained_note"] == UNTRAINED_LABELS_NOTE
    assert result.err.count(UNTRAINED_LABELS_NOTE) == 1
    assert "agreement with torch: onnx top-1 5/5, top-10 overlap 100%" in result.err


def test_class_names_skipped_targets_and_the_human_table(cli, named_artifact, photos, tmp_path):
    images = [photos / "astronaut.jpg", photos / "coffee.png"]
    out = tmp_path / "predict.json"
    # no torch: the first target that runs is the reference; int8 and the engine are not made on demand
    result = cli("predict", named_artifact, *images, "--targets", "onnx-int8,onnx,trt-fp16", "--json", out)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    assert report["class_names"] is True and report["top"] == 5 and report["reference"] == "onnx"
    rows = by_name(report)
    assert [row["target"] for row in report["targets"]] == ["onnx-int8", "onnx", "trt-fp16"]
    assert rows["onnx"]["status"] == "ok"
    assert rows["onnx-int8"]["status"] == "skipped"
    assert (
        f"has no model.int8.onnx; make it with `mfdeploy calibrate {named_artifact} --precision int8`"
        in (rows["onnx-int8"]["reason"])
    )
    assert not (named_artifact / "model.int8.onnx").exists()
    no_tensorrt = tensorrt_unavailable_reason()
    if no_tensorrt is not None:
        assert rows["trt-fp16"]["status"] == "skipped" and rows["trt-fp16"]["reason"].startswith(no_tensorrt)
    if rows["trt-fp16"]["status"] == "skipped":
        assert f"mfdeploy build-engine {named_artifact} --precision fp16" in rows["trt-fp16"]["reason"]

    assert [Path(image["path"]) for image in report["images"]] == images
    for image in report["images"]:
        assert set(image["predictions"]) == {"onnx"}
        for p in image["predictions"]["onnx"]:
            assert set(p) == {"label", "index", "probability"} and p["label"] == CLASS_NAMES[p["index"]]

    # the summary on stdout: skipped targets with the command, one table per image, class names verbatim
    text = result.out
    assert f"make it with `mfdeploy calibrate {named_artifact} --precision int8`" in text
    assert str(images[0]) in text and str(images[1]) in text
    best = report["images"][0]["predictions"]["onnx"][0]
    assert f"{best['label']}  {best['probability']:.2%}" in text
    shown = [p["label"] for image in report["images"] for p in image["predictions"]["onnx"]]
    assert all(label in text for label in shown)  # markup-like names are printed as they are
    assert any("[" in label for label in shown)
    assert "agreement: only onnx ran, nothing to compare with" in text
    assert UNTRAINED_LABELS_NOTE in text  # the copy still has random weights


def assert_one_line_error(result, *fragments):
    assert result.code == 1, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_each_bad_input_gives_one_line_and_exit_1(cli, small_export, photos, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-broken").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "only-broken" / name).write_bytes(b"\x89PNG garbage")
    photo = photos / "astronaut.jpg"
    cases = [
        (["predict", small_export, tmp_path / "missing.png"], ["missing.png does not exist"]),
        (["predict", small_export, tmp_path / "notes.txt"], ["notes.txt", "not an image Pillow can identify"]),
        (["predict", small_export, tmp_path / "empty"], ["image folder", "has no images"]),
        (["predict", small_export, tmp_path / "only-broken"], ["none of the 2 image files could be read"]),
        (["predict", small_export, photo, "--targets", "onnx,tpu"], ["unknown target 'tpu'", "valid targets are"]),
        (["predict", tmp_path, photo], ["has no manifest.json", "not an mfdeploy artifact folder"]),
        (["predict", small_export, photo, "--top", "0"], ["--top must be at least 1"]),
        (["predict", small_export, photo, "--top", "11"], ["--top must be at most 10"]),
    ]
    for args, fragments in cases:
        assert_one_line_error(cli(*args), *fragments)


def test_a_real_process_exits_1_with_one_line_and_the_json_error(small_export, tmp_path):
    result = run_subprocess("predict", small_export, tmp_path / "nope.jpg", "--json")
    assert_one_line_error(result, "nope.jpg does not exist")
    assert result.json() == {"error": {"message": f"image {tmp_path / 'nope.jpg'} does not exist", "exit_code": 1}}


def test_the_library_call_matches_the_command(small_export, photos):
    """From Python: the same report, and the probabilities are the softmax of the runner's own logits."""
    artifact = Artifact.open(small_export)
    report = run_predict(artifact, [photos / "astronaut.jpg"], PredictOptions(targets=["onnx"], top=3))
    [image] = report["images"]
    ranked = image["predictions"]["onnx"]
    with create_runner("onnx", artifact) as runner:
        logits = runner.infer(artifact.preprocessing(load_image(photos / "astronaut.jpg"))[None])
    expected = softmax(logits)[0]
    assert [p["index"] for p in ranked] == list(np.argsort(-expected)[:3])
    assert [p["probability"] for p in ranked] == pytest.approx(expected[[p["index"] for p in ranked]].tolist())
