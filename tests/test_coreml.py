"""`mfdeploy export --target coreml`: ML programs for every size, verified against PyTorch on real
photographs by evaluating the saved package's MIL program with numpy (and with MLModel.predict on
macOS); image input, classifier labels, enumerated batches, weight compression, deployment targets,
and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch

from mfdeploy.artifacts import Artifact
from mfdeploy.export import coreml_export
from mfdeploy.export.coreml_export import CoreMLOptions, CoreMLVerification
from mfdeploy.export.coreml_program import inspect_program
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.images.datasets import load_digits_data
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.images.samples import builtin_images, builtin_photos
from mfdeploy.metrics import compare_logits
from mfdeploy.model import build_model
from mfdeploy.model.weights import save_checkpoint
from mfdeploy.runtime.coreml_env import compute_plan_unavailable_reason, predict_unavailable_reason
from mfdeploy.runtime.coreml_runner import CoreMLRunner, chunk_sizes
from mfdeploy.runtime.mil_evaluator import MILEvaluator, load_program
from mfdeploy.runtime.registry import create_runner

EVALUATOR_NOTE = "numerics, not device latency"


def spec_of(package):
    return ct.models.MLModel(str(package), skip_model_load=True).get_spec()


def assert_nothing_written(out):
    """No artifact folder, no staging folder, no stray package under ``out``."""
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert leftovers == [], leftovers


def assert_one_error_line(result):
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert "Traceback" not in result.err
    return errors[0]


@pytest.fixture(scope="module")
def default_52m(coreml_52m):
    """`mfdeploy export --size 52m --target coreml --json`: the real CLI, in its own process (tests/conftest.py)."""
    return coreml_52m


def test_default_export_is_a_verified_fp16_ml_program(default_52m):
    out, manifest, err = default_52m
    folder = out / "mobileformer_52m"
    coreml = manifest["coreml"]
    assert (coreml["precision"], coreml["deployment_target"], coreml["batches"]) == ("fp16", "iOS16", [1])
    assert coreml["compression"]["mode"] == "none"
    assert coreml["input"] == {
        "name": "images",
        "kind": "tensor",
        "dtype": "float32",
        "shape": [1, 3, 224, 224],
        "enumerated_batches": [1],
    }
    # Every op exists on iOS16; far fewer compute ops than the official model's 767.
    assert coreml["unsupported_ops"] == []
    assert coreml["compute_ops"] <= 500 < coreml["official_52m_compute_ops"] == 767
    assert coreml["op_histogram"]["gelu"] == 16 and "erf" not in coreml["op_histogram"]
    # Verified on 100 real photographs, FP16 (what the package computes) and FP32, against PyTorch.
    verification = coreml["verification"]
    assert verification["passed"] and verification["images"] == 100 and verification["deployed"] == "fp16"
    # random weights: flat logits make top-1 agreement noise, so cosine is the gate (as parity does)
    assert verification["gate"] == "fp16 cosine >= 0.999 (untrained model: top-1 agreement reported, not gated)"
    evaluations = verification["evaluations"]
    assert set(evaluations) >= {"fp16", "fp32"}
    assert evaluations["fp16"]["top1_agreement"] >= 0.99
    assert evaluations["fp16"]["nan_count"] == evaluations["fp16"]["inf_count"] == 0
    assert all(EVALUATOR_NOTE in e["runner"] for name, e in evaluations.items() if name != "predict")
    assert manifest["verification"]["coreml"] == verification
    # The package is recorded (hashed as a folder) and the summary says what was checked, and how.
    artifact = Artifact.open(folder)
    assert artifact.require("model.mlpackage", "re-export").is_dir()
    assert artifact.manifest["files"]["model.mlpackage"]["kind"] == "directory"
    assert "Core ML:" in err and "767" in err and "top-1 agreement" in err
    assert sorted(p.name for p in out.iterdir()) == ["mobileformer_52m"]


def test_package_carries_the_metadata_xcode_shows(default_52m):
    out, manifest, _ = default_52m
    spec = spec_of(out / "mobileformer_52m" / "model.mlpackage")
    description = spec.description
    meta = description.metadata
    assert "Mobile-Former 52m" in meta.shortDescription and "MAdds" in meta.shortDescription
    assert meta.author and meta.license and meta.versionString
    user = dict(meta.userDefined)
    assert user["mfdeploy.size"] == "52m"
    assert int(user["mfdeploy.madds"]) == manifest["model"]["madds"]
    assert json.loads(user["mfdeploy.preprocessing"]) == manifest["preprocessing"]
    (image_input,) = description.input
    assert image_input.name == "images" and "mean" in image_input.shortDescription
    array = image_input.type.multiArrayType
    assert list(array.shape) == [1, 3, 224, 224]
    assert array.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    (logits,) = description.output
    assert logits.name == "logits" and logits.shortDescription
    assert logits.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32


def test_registry_runs_the_package_with_predict_or_the_evaluator(default_52m):
    out, _, _ = default_52m
    artifact = Artifact.open(out / "mobileformer_52m")
    images = artifact.preprocessing.batch(builtin_images(6))
    with create_runner("coreml", artifact) as coreml, create_runner("torch", artifact) as reference:
        # engine auto: MLModel.predict where Core ML can predict (macOS), the numpy evaluator elsewhere
        predicts = predict_unavailable_reason() is None
        assert coreml.engine == ("predict" if predicts else "evaluator")
        assert (EVALUATOR_NOTE in coreml.label) == (not predicts) and ("MLModel.predict" in coreml.label) == predicts
        assert coreml.inputs()[0].fixed_batch == 1 and coreml.precision == "fp16"
        figures = compare_logits(reference.infer(images), coreml.infer_all(images, 4))
    assert figures["top1_agreement"] == 1.0 and figures["cosine"] > 0.999


def test_an_evaluator_runner_given_the_program_does_not_read_it_again(default_52m, monkeypatch):
    """The export reads the written package's program once and hands it to both evaluators."""
    package = default_52m[0] / "mobileformer_52m" / "model.mlpackage"
    images = Artifact.open(package.parent).preprocessing.batch(builtin_images(2))
    with CoreMLRunner(package, engine="evaluator", evaluator_precision="fp32") as reading:
        expected = reading.infer_all(images, 1)
    program = load_program(package)

    def no_second_read(*args, **kwargs):
        raise AssertionError("the package was read again")

    monkeypatch.setattr(MILEvaluator, "from_package", no_second_read)
    with CoreMLRunner(package, engine="evaluator", evaluator_precision="fp32", program=program) as given:
        np.testing.assert_array_equal(given.infer_all(images, 1), expected)


def test_a_changed_package_is_refused(default_52m, tmp_path):
    out, _, _ = default_52m
    copy = tmp_path / "mobileformer_52m"
    shutil.copytree(out / "mobileformer_52m", copy)
    weights = next((copy / "model.mlpackage").rglob("weight.bin"))
    with weights.open("r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(coreml_export.UserError, match="model.mlpackage changed since it was written"):
        create_runner("coreml", Artifact.open(copy))


@pytest.mark.macos
def test_real_core_ml_prediction_matches_pytorch(default_52m):
    reason = predict_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    out, _, _ = default_52m
    artifact = Artifact.open(out / "mobileformer_52m")
    images = artifact.preprocessing.batch(builtin_images(32))
    with CoreMLRunner(artifact.path("model.mlpackage"), engine="predict") as coreml:
        with create_runner("torch", artifact) as reference:
            figures = compare_logits(reference.infer(images), coreml.infer_all(images, 1))
    assert figures["top1_agreement"] >= 0.99


@pytest.mark.macos
def test_compute_plan_profile_names_devices_and_costs(default_52m):
    reason = compute_plan_unavailable_reason()  # macOS 14.4+ (an older macOS is tested below, faked)
    if reason is not None:
        pytest.skip(reason)
    out, _, _ = default_52m
    artifact = Artifact.open(out / "mobileformer_52m")
    with create_runner("coreml", artifact, profile=True, engine="predict") as coreml:
        coreml.infer(artifact.preprocessing.batch(builtin_images(1)))
        layers = coreml.profile_layers()
    assert layers and {layer.device for layer in layers} <= {"CPU", "GPU", "NeuralEngine", None}
    assert sum(layer.estimated_cost or 0 for layer in layers) > 0


def test_evaluator_runner_says_its_latency_is_not_a_phones(default_52m):
    out, _, _ = default_52m
    artifact = Artifact.open(out / "mobileformer_52m")
    with create_runner("coreml", artifact, engine="evaluator", profile=True) as coreml:
        assert "not the latency of a phone" in coreml.benchmark_caveat
        assert coreml.profile_layers() is None  # no compute plan without the Core ML runtime


def test_fp32_program_with_enumerated_batches(tmp_path):
    options = CoreMLOptions(precision="fp32", batches=(1, 4, 8), verify_images=32)
    stage = {"coreml": options}  # 96 px: the shapes and the op count do not depend on the image size
    result = export(ExportOptions(size="52m", imgsz=96, target="coreml", out=tmp_path, stage_options=stage))
    coreml = result.manifest["coreml"]
    fp32 = coreml["verification"]["evaluations"]["fp32"]
    assert coreml["verification"]["gate"].startswith("fp32 max abs error <= ")
    assert coreml["verification"]["limit"] == pytest.approx(1e-3 + 1e-4 * coreml["verification"]["scale"])
    assert fp32["max_abs_error"] <= 1e-3 and fp32["top1_agreement"] == 1.0
    assert coreml["compute_ops"] <= 500  # enumerated shapes add no ops
    package = result.artifact / "model.mlpackage"
    assert _unchanged_by_the_pass_left_out(package)  # symbolic batch: where the pass took longest
    shapes = spec_of(package).description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert [list(s.shape) for s in shapes] == [[1, 3, 96, 96], [4, 3, 96, 96], [8, 3, 96, 96]]
    # Seven images run as a batch of 4 and three of 1, each at a shape the package accepts.
    assert chunk_sizes(7, (1, 4, 8)) == [(4, 4), (1, 1), (1, 1), (1, 1)]
    assert chunk_sizes(3, (4, 8)) == [(4, 3)]
    images = Artifact.open(result.artifact).preprocessing.batch(builtin_images(7))
    with torch.no_grad():
        expected = build_model("52m")(torch.from_numpy(images)).numpy()
    with CoreMLRunner(package, engine="evaluator", evaluator_precision="fp32") as runner:
        assert runner.inputs()[0].shape[0] == "batch"
        np.testing.assert_allclose(runner.infer_all(images, 8), expected, atol=1e-3)


def test_int8_weights_halve_the_package_and_keep_top1(tmp_path, cli):
    # 96 px: what is measured is the weights' size, which the image size does not change
    args = ["--size", "52m", "--imgsz", "96", "--target", "coreml", "--compress", "int8"]
    result = cli("export", *args, "--out", tmp_path, "--json")
    assert result.code == 0, result.err
    coreml = result.json()["coreml"]
    compression = coreml["compression"]
    assert compression["mode"] == "int8" and compression["bytes_after"] < 0.6 * compression["bytes_before"]
    assert coreml["op_histogram"]["constexpr_affine_dequantize"] > 50  # iOS16's int8 weight op
    fp16 = coreml["verification"]["evaluations"]["fp16"]
    assert coreml["verification"]["gate"].startswith("fp16 cosine >= 0.99 (untrained model")
    assert fp16["cosine"] >= 0.99 and fp16["top1_agreement"] >= 0.98 and "int8 weights" in fp16["runner"]


def test_image_input_classifier_labels_a_real_photo_like_pytorch(tmp_path, cli):
    labels = [f"class {i}" for i in range(10)]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n")
    out = tmp_path / "out"
    args = ["--size", "52m", "--num-classes", "10", "--imgsz", "128", "--image-input", "--labels", labels_file]
    result = cli("export", "--target", "coreml", *args, "--out", out, "--json")
    assert result.code == 0, result.err
    manifest = result.json()
    coreml = manifest["coreml"]
    assert coreml["labels"] == {"classifier": True, "source": "file", "count": 10, "file": str(labels_file)}
    image = coreml["input"]
    assert image["kind"] == "image" and image["scale"] == pytest.approx(1 / 255)
    assert image["bias"] == pytest.approx([-m for m in manifest["preprocessing"]["mean"]])
    assert image["folded_std"] == pytest.approx(manifest["preprocessing"]["std"])
    package = out / "mobileformer_52m" / "model.mlpackage"
    description = spec_of(package).description
    assert description.input[0].type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert [o.name for o in description.output] == ["classLabel", "classLabel_probs", "logits"]
    assert description.predictedFeatureName == "classLabel"
    assert dict(description.metadata.userDefined)["com.apple.coreml.model.preview.type"] == "imageClassifier"

    # Real photographs, as an app would send them: the manifest's resize and crop, then raw 0-255 RGB.
    preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
    model = build_model("52m", num_classes=10)
    photos = [photo for _, photo in builtin_photos()[:8]]
    for precision in ("fp32", "fp16"):
        evaluator = MILEvaluator.from_package(package, precision)
        for photo in photos:
            with torch.no_grad():
                logits = model(torch.from_numpy(preprocessing(photo)[None])).numpy()[0]
            pixels = preprocessing.pixels(photo).transpose(2, 0, 1)[None].astype(np.float32)
            outputs = evaluator.run({"image": pixels})
            assert outputs["classLabel"] == labels[int(np.argmax(logits))]
            assert sum(outputs["classLabel_probs"].values()) == pytest.approx(1.0, abs=1e-2)
            assert compare_logits(logits[None], outputs["logits"])["cosine"] > 0.999


def test_trained_checkpoint_keeps_its_class_names_and_predictions(digits):
    """The digits artifact (tests/conftest.py) was exported from the trained checkpoint with --target coreml."""
    artifact = Artifact.open(digits["root"])
    coreml = artifact.manifest["coreml"]
    assert coreml["labels"]["source"] == "checkpoint" and coreml["labels"]["count"] == 10
    # Trained weights: no LayerNorm happens to equal another, so this is the structural op count (the official
    # family's 26m: its channel shuffles are gathers; the official code's own program has 767 ops at 52m).
    assert coreml["compute_ops"] <= 550
    assert coreml["verification"]["evaluations"]["fp16"]["top1_agreement"] >= 0.99
    # And on the handwritten digits it was trained on, the package predicts what PyTorch predicts.
    val = load_digits_data().val
    digits = artifact.preprocessing.batch(val.image(i) for i in range(0, len(val), 3))
    with create_runner("coreml", artifact) as coreml_runner, create_runner("torch", artifact) as reference:
        expected = reference.infer(digits)
        figures = compare_logits(expected, coreml_runner.infer_all(digits, 1))
    assert figures["top1_agreement"] >= 0.99
    truth = val.labels[::3]
    assert (expected.argmax(1) == truth).mean() >= 0.85


def _small_compressed_export(small_export, out, compress, target):
    """The Core ML target added to a copy of the small ONNX artifact: the export grows the folder (same model
    and settings), so the verified graph is kept, not exported again."""
    shutil.copytree(small_export, out / small_export.name)
    graph = (out / small_export.name / "model.onnx").read_bytes()
    options = CoreMLOptions(compress=compress, deployment_target=target, verify_images=24)
    stage = {"coreml": options}
    result = export(ExportOptions(size="26m", imgsz=64, num_classes=10, target="coreml", out=out, stage_options=stage))
    assert result.mode == "grow" and (result.artifact / "model.onnx").read_bytes() == graph
    return result


@pytest.fixture(scope="module")
def int8_ios18(small_export, tmp_path_factory):
    return _small_compressed_export(small_export, tmp_path_factory.mktemp("int8ios18"), "int8", "iOS18")


@pytest.mark.parametrize(
    "compress, target, weight_op, spec_version",
    [("int8", "iOS18", "constexpr_blockwise_shift_scale", 9), ("palettize4", "iOS17", "constexpr_lut_to_dense", 8)],
)
def test_compression_for_newer_targets_is_evaluated_too(
    int8_ios18, small_export, tmp_path, compress, target, weight_op, spec_version
):
    result = int8_ios18 if compress == "int8" else _small_compressed_export(small_export, tmp_path, compress, target)
    coreml = result.manifest["coreml"]
    assert coreml["op_histogram"][weight_op] > 50 and coreml["unsupported_ops"] == []
    package_version = spec_of(result.artifact / "model.mlpackage").specificationVersion
    assert coreml["specification_version"] == spec_version == package_version
    assert coreml["compression"]["bytes_after"] < coreml["compression"]["bytes_before"]
    fp16 = coreml["verification"]["evaluations"]["fp16"]
    assert fp16["nan_count"] == 0 and fp16["cosine"] > 0.9


def test_op_check_names_ops_the_target_lacks(int8_ios18):
    program = load_program(int8_ios18.artifact / "model.mlpackage")
    assert inspect_program(program, "iOS18").unsupported == []
    unsupported = inspect_program(program, "iOS16").unsupported
    assert "constexpr_blockwise_shift_scale (needs iOS18)" in unsupported
    assert "the program's opset (needs iOS18)" in unsupported


@pytest.mark.slow
def test_every_size_converts_and_evaluates(swept_size):
    """Converted at 64 px (every stage and op of the 224 px graph), FP16 for iOS16, then evaluated by the MIL
    evaluator in both precisions against PyTorch on two real images (tests/size_sweep.py)."""
    coreml = swept_size.coreml
    assert coreml["unsupported"] == [] and coreml["compute_ops"] > 0
    for precision, figures in coreml["evaluations"].items():
        assert figures["unsupported_ops"] == []
        assert figures["top1_agreement"] == 1.0 and figures["cosine"] > 0.999, (precision, figures)


# -- bad input: one line, non-zero exit, nothing written ----------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batches", ",".join(str(b) for b in range(1, 130))], "at most 128 enumerated shapes"),
        (["--batches", "1,0"], "batch sizes must be positive"),
        (["--batches", "1,four"], "'four' is not one"),
        (["--deployment-target", "iOS15"], "unknown deployment target 'iOS15'; choose one of iOS16, iOS17, iOS18"),
        (["--precision", "int8"], "Core ML computes in fp16 or fp32; for int8 weights use --compress int8"),
        (["--precision", "bf16"], "Core ML computes in fp16 or fp32"),
        (["--compress", "int4"], "unknown --compress 'int4'"),
        (["--image-input", "--batches", "1,4"], "--image-input takes one image per prediction"),
        (["--labels", "missing.txt"], "labels file missing.txt does not exist"),
    ],
)
def test_bad_options_fail_before_any_work(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli("export", "--size", "26m", "--target", "coreml", "--out", tmp_path / "out", *args)
    assert result.code == 1
    assert message in assert_one_error_line(result)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize(
    "lines, message",
    [
        (["cat", "dog"], "has 2 lines but the model has 10 classes"),
        (["cat", "", "dog"], "line 2 is empty"),
        (["cat", "dog", "cat"], "'cat' is on lines 1 and 3; class names must be unique"),
    ],
)
def test_bad_labels_file(cli, tmp_path, lines, message):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    args = ["--size", "26m", "--num-classes", "10", "--target", "coreml", "--labels", labels]
    result = cli("export", *args, "--out", tmp_path / "out")
    assert result.code == 1
    assert message in assert_one_error_line(result)
    assert_nothing_written(tmp_path / "out")


def test_image_input_needs_three_channels(cli, tmp_path):
    weights = save_checkpoint(build_model("26m", num_classes=10, in_chans=1), tmp_path / "gray.safetensors")
    result = cli("export", "--weights", weights, "--target", "coreml", "--image-input", "--out", tmp_path / "out")
    assert result.code == 1
    assert "--image-input needs a model with 3 input channels" in assert_one_error_line(result)
    assert_nothing_written(tmp_path / "out")


def test_core_ml_options_need_the_core_ml_target(cli, tmp_path):
    result = cli("export", "--size", "26m", "--target", "onnx", "--compress", "int8", "--out", tmp_path / "out")
    assert result.code == 1
    assert "--compress: Core ML options, not used by --target onnx" in assert_one_error_line(result)
    assert_nothing_written(tmp_path / "out")


HIDE_COREMLTOOLS = "import sys; sys.modules['coremltools'] = None; "


def test_missing_coremltools_names_the_extra(tmp_path):
    """A Python where coremltools cannot be imported (as when the extra is not installed)."""
    import subprocess

    code = HIDE_COREMLTOOLS + "from mfdeploy.cli import main; main(sys.argv[1:])"
    args = ["export", "--size", "26m", "--imgsz", "64", "--target", "coreml", "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'mfdeploy[coreml]'" in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path / "out")


def test_runner_without_coremltools_is_unavailable_not_broken(default_52m):
    import subprocess

    out, _, _ = default_52m
    code = HIDE_COREMLTOOLS + (
        "from mfdeploy.artifacts import Artifact\n"
        "from mfdeploy.runtime.registry import TargetUnavailable, create_runner\n"
        "try:\n"
        f"    create_runner('coreml', Artifact.open({str(out / 'mobileformer_52m')!r}))\n"
        "except TargetUnavailable as exc:\n"
        "    print(exc.reason)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'mfdeploy[coreml]'" in proc.stdout


def test_runner_option_errors(default_52m):
    out, _, _ = default_52m
    package = out / "mobileformer_52m" / "model.mlpackage"
    with pytest.raises(coreml_export.UserError, match="unknown Core ML compute units 'GPU'"):
        CoreMLRunner(package, compute_units="GPU")
    if predict_unavailable_reason() is not None:
        with pytest.raises(coreml_export.UserError, match="Core ML prediction needs macOS"):
            CoreMLRunner(package, engine="predict")


def test_a_failing_stage_leaves_no_partial_package(tmp_path, monkeypatch):
    """Fault injection: the verification reports a failure (which a correct conversion never does)."""

    def failing(package, loaded, preprocessing, options, program=None):
        assert package.is_dir()  # the package was written into the staging folder...
        figures = {"max_abs_error": 1.0, "top1_agreement": 0.5, "nan_count": 0, "inf_count": 0}
        return CoreMLVerification(1, "fp16", "fp16 top-1 agreement >= 99%", False, {"fp16": figures})

    monkeypatch.setattr(coreml_export, "verify_package", failing)
    options = ExportOptions(size="26m", imgsz=64, num_classes=10, target="coreml", out=tmp_path / "out")
    with pytest.raises(coreml_export.VerificationError, match="Core ML verification failed") as info:
        export(options)
    assert info.value.exit_code == 4
    assert_nothing_written(tmp_path / "out")  # ...and went away with it


# -- the macOS-only code, checked here against the installed coremltools -------------------------------
# Core ML prediction and compute plans cannot run off macOS, so these tests check the next best thing:
# every coremltools name and keyword the macOS path uses exists in the installed coremltools (9.x).
# They prove the names resolve (get_compiled_path, for one, does not); not what Core ML does on a device.
MACOS_FUNCTIONS = ("_load_mlmodel", "_predict", "_compute_plan_records")
NOT_COREMLTOOLS = {"get", "values", "startswith", "append", "__name__"}  # dict, str, list and type attributes


def missing_coremltools_names(api) -> list[str]:
    """The entries of ``api`` ((dotted name, keywords) pairs) the installed coremltools lacks."""
    import dataclasses
    import importlib
    import inspect

    missing = []
    for dotted, keywords in api:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            try:
                target = importlib.import_module(".".join(parts[:end]))
                break
            except ImportError:
                continue
        for name in parts[end:]:
            if hasattr(target, name):
                target = getattr(target, name)
            elif dataclasses.is_dataclass(target) and name in {f.name for f in dataclasses.fields(target)}:
                target = None  # a dataclass field (no class attribute): it exists, there is nothing below it
            else:
                missing.append(dotted)
                break
        else:
            parameters = inspect.signature(target).parameters if keywords else {}
            missing += [f"{dotted}({keyword}=)" for keyword in keywords if keyword not in parameters]
    return missing


def names_not_in_api(source: str, api) -> list[str]:
    """Attributes, imports and keywords in the macOS-only functions of ``source`` that ``api`` does not list."""
    import ast

    listed = {part for dotted, _ in api for part in dotted.split(".")}
    keywords = {keyword for _, words in api for keyword in words}
    unlisted = []
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name in MACOS_FUNCTIONS]
    assert sorted(f.name for f in functions) == sorted(MACOS_FUNCTIONS)
    for node in (n for function in functions for n in ast.walk(function)):
        if isinstance(node, ast.Attribute) and node.attr not in listed | NOT_COREMLTOOLS:
            unlisted.append(node.attr)
        elif isinstance(node, ast.ImportFrom):
            unlisted += [
                f"{node.module}.{a.name}"
                for a in node.names
                if not any(dotted.startswith(f"{node.module}.{a.name}.") for dotted, _ in api)
            ]
        elif isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id == "LayerRecord"):
            unlisted += [f"{k.arg}=" for k in node.keywords if k.arg not in keywords]
    return unlisted


def test_every_coremltools_name_the_macos_path_uses_exists_here():
    from mfdeploy.runtime import coreml_runner

    source = Path(coreml_runner.__file__).read_text()
    assert names_not_in_api(source, coreml_runner.COREMLTOOLS_API) == []  # the list covers the code
    assert missing_coremltools_names(coreml_runner.COREMLTOOLS_API) == []  # and coremltools has each name


def test_the_coremltools_name_check_fails_for_a_broken_name():
    from mfdeploy.runtime import coreml_runner

    broken = [
        ("coremltools.models.MLModel.get_compiled_path", ()),  # what the runner called before coremltools 9
        ("coremltools.models.MLModel", ("compute_unit",)),
        ("coremltools.ComputeUnit.NPU", ()),
        ("coremltools.models.compute_plan.MLComputePlanCost.weights", ()),
    ]
    assert missing_coremltools_names(broken) == [
        "coremltools.models.MLModel.get_compiled_path",
        "coremltools.models.MLModel(compute_unit=)",
        "coremltools.ComputeUnit.NPU",
        "coremltools.models.compute_plan.MLComputePlanCost.weights",
    ]
    source = Path(coreml_runner.__file__).read_text()
    changed = source.replace("model.get_compiled_model_path()", "model.get_compiled_path()")
    changed = changed.replace("MLModel(package, compute_units=", "MLModel(package, units=")
    assert changed.count("get_compiled_path") == 1 and changed.count("MLModel(package, units=") == 1
    assert sorted(names_not_in_api(changed, coreml_runner.COREMLTOOLS_API)) == ["get_compiled_path", "units="]


@pytest.mark.parametrize(
    ("version", "ok"), [("13.6.1", False), ("14.3", False), ("14.4", True), ("15.1", True), ("", False)]
)
def test_compute_plans_need_macos_14_4(monkeypatch, version, ok):
    """The version gate, here with the platform faked (the profile itself needs a Mac): an older macOS
    gets a one-line reason from the runner's profile_layers, which bench reports as the cell's profile."""
    from types import SimpleNamespace

    from mfdeploy.runtime import coreml_env

    monkeypatch.setattr(coreml_env, "predict_unavailable_reason", lambda: None)
    monkeypatch.setattr(coreml_env.platform, "mac_ver", lambda: (version, ("", "", ""), ""))
    reason = coreml_env.compute_plan_unavailable_reason()
    assert (reason is None) == ok
    if not ok:
        assert (
            reason
            == f"Core ML compute plans (bench --profile) need macOS 14.4 or later; this is macOS {version or '?'}"
        )
        runner = SimpleNamespace(profile=True, engine="predict")
        with pytest.raises(coreml_export.UserError, match="need macOS 14.4 or later"):
            CoreMLRunner.profile_layers(runner)


@pytest.mark.parametrize("arch", ["seed", "official"])
def test_coremltools_gets_the_weight_arithmetic_already_folded(arch):
    """The trace handed to coremltools is frozen: the arithmetic forward does on weights (scales, affines,
    concatenated projections) is constants by then, so the converter's passes walk far fewer nodes."""
    from mfdeploy.export.coreml_convert import _frozen
    from mfdeploy.model.families import build_family_model

    model = build_family_model(arch, "26m").eval()
    x = torch.from_numpy(Preprocessing.for_size(32).batch(builtin_images(2)))
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        frozen = _frozen(traced)
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-5, atol=1e-6)  # float32 rounding only
    kinds = [node.kind() for node in frozen.graph.nodes()]
    assert "prim::GetAttr" not in kinds  # no parameter is read at run time
    assert len(kinds) < 0.5 * len(list(traced.inlined_graph.nodes()))


@pytest.mark.parametrize("which", ["default_52m", "digits"])
def test_every_computed_value_is_named_after_its_stage(which, request):
    """Core ML's compute plan reports an op by its output's name: the package names every value after the
    module that computed it, so the per-stage profile on a Mac puts each op in its stage (seed 52m from the
    CLI; the official family's digits-trained 26m)."""
    from mfdeploy.model.families import build_family_model
    from mfdeploy.model.stages import OTHER, stage_names, stage_of

    fixture = request.getfixturevalue(which)
    folder = fixture[0] / "mobileformer_52m" if which == "default_52m" else fixture["root"]
    function = load_program(folder / "model.mlpackage").functions["main"]
    outputs = {var.name for var in function.outputs}
    computed = [
        var.name
        for op in function.operations
        if op.op_type != "const" and not op.op_type.startswith("constexpr_")
        for var in op.outputs
        if var.name not in outputs
    ]
    unnamed = [name for name in computed if stage_of(name) == OTHER]
    if which == "digits":  # a classifier: its own softmax (and that value's cast) is no stage of the model
        assert "probabilities" in unnamed and len(unnamed) <= 2, unnamed
    else:
        assert unnamed == []
    model = json.loads((folder / "manifest.json").read_text())["model"]
    expected = stage_names(build_family_model(model["family"], model["size"]).cfg)
    assert {stage_of(name) for name in computed} - {OTHER} == set(expected)  # every stage, and only stages


class _TinyClassifier(torch.nn.Module):
    """A network small enough to convert in well under a second: what coremltools' validation does to
    a conversion does not depend on the network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _tiny_spec():
    from mfdeploy.export.coreml_convert import ConversionSpec

    return ConversionSpec(CoreMLOptions(), imgsz=32, in_chans=3, preprocessing=Preprocessing.for_size(32))


def test_validation_is_off_only_inside_the_conversion():
    from coremltools.converters.mil.mil import Program

    from mfdeploy.export.coreml_convert import validated_once

    real = Program.validate
    with pytest.raises(RuntimeError, match="inside"):
        with validated_once():
            assert Program.validate is not real
            with validated_once():  # nested (a decompression inside an export's block): no deadlock
                assert Program.validate is not real
            assert Program.validate is not real
            raise RuntimeError("an error inside the conversion")
    assert Program.validate is real  # restored, error or not


def test_a_conversion_waiting_for_another_restores_the_real_validation():
    """Two threads: the second enters validated_once while the first is inside it. It must read the original
    only once the first has put it back, or it would restore the first one's no-op for good."""
    import threading
    import time

    from coremltools.converters.mil.mil import Program

    from mfdeploy.export.coreml_convert import validated_once

    real = Program.validate
    second_done = threading.Event()

    def second() -> None:
        with validated_once():
            assert Program.validate is not real
        second_done.set()

    with validated_once():
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.2)  # the second thread reaches validated_once and waits for the first
        assert not second_done.is_set()
    waiting.join(timeout=30)
    assert second_done.is_set() and Program.validate is real


def test_a_program_a_pass_leaves_invalid_is_still_refused(monkeypatch):
    """coremltools' per-pass validation is skipped (validated_once), the finished program is still
    validated: a pass that leaves the program inconsistent (a value that claims a consumer which does
    not read it, which nothing after the passes would notice) fails the conversion."""
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    from mfdeploy.export import coreml_convert

    name = "mfdeploy_test::claim_a_consumer_that_reads_nothing"
    if name not in PASS_REGISTRY:

        @register_pass(namespace="mfdeploy_test")
        class claim_a_consumer_that_reads_nothing(AbstractGraphPass):  # noqa: N801 - coremltools' naming
            def apply(self, prog) -> None:
                operations = list(prog.functions["main"].operations)
                operations[0].outputs[0]._child_ops.append(operations[-1])

    real_pipeline = coreml_convert.pass_pipeline

    def with_the_broken_pass(spec, compress=True):
        pipeline = real_pipeline(spec, compress)
        pipeline.append_pass(name)
        return pipeline

    model = _TinyClassifier().eval()
    mlmodel, _ = coreml_convert.convert(model, _tiny_spec())  # the pipeline as it is: valid
    assert len(list(mlmodel._mil_program.functions["main"].operations)) > 1
    monkeypatch.setattr(coreml_convert, "pass_pipeline", with_the_broken_pass)
    with pytest.raises(Exception, match="should be consumed by op"):
        coreml_convert.convert(model, _tiny_spec())


def _unchanged_by_the_pass_left_out(package: Path) -> bool:
    """Whether coremltools' reduce_transposes, which coreml_passes leaves out of the pipeline, would change
    nothing in the program of ``package``: no transpose it could cancel or sink is left in it."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    from mfdeploy.export.coreml_passes import UNUSED_PASS

    program = load_program(package)

    def ops() -> list[tuple[str, tuple[str, ...]]]:
        return [(op.op_type, tuple(v.name for v in op.outputs)) for op in program.functions["main"].operations]

    before = ops()
    assert any(op_type == "transpose" for op_type, _ in before)  # there are transposes for it to look at
    PASS_REGISTRY[UNUSED_PASS](program)
    return ops() == before


@pytest.mark.parametrize("which", ["default_52m", "digits"])
def test_the_transpose_pass_left_out_would_change_nothing(which, request):
    """The pipeline leaves coremltools' reduce_transposes out (its time for nothing): run on the programs
    the export made without it (seed 52m from the CLI; the official family's digits-trained 26m), it
    changes no op. The enumerated-batch case is checked in test_fp32_program_with_enumerated_batches."""
    fixture = request.getfixturevalue(which)
    folder = fixture[0] / "mobileformer_52m" if which == "default_52m" else fixture["root"]
    assert _unchanged_by_the_pass_left_out(folder / "model.mlpackage")


def test_the_transpose_check_sees_a_transpose_the_pass_would_sink(tmp_path):
    """The check above can fail: a network that transposes around a ReLU and back converts (without
    reduce_transposes) to a program that the pass would change."""
    from mfdeploy.export import coreml_convert

    class TransposedReLU(_TinyClassifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return self.head(y.mean(dim=(2, 3)))

    mlmodel, _ = coreml_convert.convert(TransposedReLU().eval(), _tiny_spec())
    mlmodel.save(str(tmp_path / "transposed.mlpackage"))
    assert not _unchanged_by_the_pass_left_out(tmp_path / "transposed.mlpackage")


def test_propagation_is_skipped_only_where_it_cannot_change_anything():
    """coremltools' nonreplaceable-var propagation (propagated_where_needed) still runs wherever a constexpr
    op could make a value's set non-empty, and is restored afterwards."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.block import Block

    from mfdeploy.export.coreml_convert import propagated_where_needed, propagation_can_change

    def plain(x):
        return mb.relu(x=x)

    def with_int8_weights(x):
        weights = mb.constexpr_affine_dequantize(
            quantized_data=np.ones((3, 3), np.int8), zero_point=np.int8(0), scale=np.float32(0.5), axis=0
        )
        return mb.matmul(x=x, y=weights)

    def build(function):
        return mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)(function)

    plain_main, int8_main = (build(f).functions["main"] for f in (plain, with_int8_weights))
    assert not propagation_can_change(plain_main)
    assert propagation_can_change(int8_main)
    outputs = {op.op_type: op.outputs[0] for block in (plain_main, int8_main) for op in block.operations}
    weights, product, relu = outputs["constexpr_affine_dequantize"], outputs["matmul"], outputs["relu"]
    real = Block._propagate_nonreplaceable_vars
    with propagated_where_needed():
        assert Block._propagate_nonreplaceable_vars is not real
        # sets as a pass could leave them: the propagation as a pass leaves its block still corrects both
        product.nonreplaceable_vars_upstream, relu.nonreplaceable_vars_upstream = set(), {weights}
        assert propagation_can_change(plain_main)  # a set from a removed constexpr op is not trusted
        for block in (plain_main, int8_main):
            with block:
                pass
    assert Block._propagate_nonreplaceable_vars is real
    assert product.nonreplaceable_vars_upstream == {weights} and relu.nonreplaceable_vars_upstream == set()
