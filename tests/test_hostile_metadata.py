"""Nothing read back from disk or typed on the command line reaches torch unchecked: damaged checkpoint
metadata and tensors, hostile pickles, corrupted manifests, out-of-range option values and hostile bench
results each end in one line that names the file or option, the field and what to do, never a traceback.

Every case writes a real file (a real exported artifact, copied and then corrupted; real checkpoints) and
goes through the real reader or the real command."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from conftest import CliResult, run_subprocess
from mfdeploy.artifacts import MANIFEST_DIGEST, MANIFEST_NAME, WEIGHTS_FILE, Artifact, manifest_digest
from mfdeploy.benchmark.bench import timing_plan
from mfdeploy.errors import UserError
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.export.verify import verify_artifact
from mfdeploy.images.preprocess import Preprocessing
from mfdeploy.model import build_model
from mfdeploy.model.weights import load_model, read_checkpoint, save_checkpoint
from mfdeploy.thresholds import DEFAULT_THRESHOLDS, judge, thresholds_for
from mfdeploy.training.options import TrainConfig, check_config

NUM_CLASSES = 10
CLASSES = [f"class-{i}" for i in range(NUM_CLASSES)]


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """A user mistake: non-zero exit, one line on stderr holding every fragment, no traceback."""
    assert result.code != 0, result.out
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_one_line(exc: pytest.ExceptionInfo[UserError], *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# -- fixtures: one real artifact per module, one real model ------------------------------------------
@pytest.fixture(scope="module")
def artifact_root(small_export) -> Path:
    """A 26m exported at 64px with 10 classes (conftest, shared by the run): small, but a complete artifact
    (graph, weights, manifest). Only read here: tests corrupt copies of it."""
    assert Artifact.open(small_export).num_classes == NUM_CLASSES
    return small_export


@pytest.fixture(scope="module")
def model():
    return build_model("26m", num_classes=NUM_CLASSES, seed=3)


def corrupted_copy(root: Path, where: Path, mutate: Callable[[dict[str, Any]], None], sign: bool = True) -> Path:
    """A copy of the artifact (files hard-linked, the manifest rewritten) with ``mutate`` applied to its
    manifest; the original is never written through the links. ``sign``: the damaged manifest carries a
    matching digest (written so by a faulty tool), so the schema is the only thing that can catch it."""
    copy = where / "artifact"
    shutil.copytree(root, copy, copy_function=os.link)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    mutate(manifest)
    if sign:
        manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    (copy / MANIFEST_NAME).unlink()
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


# -- checkpoint metadata -----------------------------------------------------------------------------
def trained_metadata() -> dict[str, Any]:
    """What `mfdeploy train` writes, for a 64px, 10-class 26m."""
    return {
        "format": "mfdeploy-checkpoint",
        "size": "26m",
        "num_classes": NUM_CLASSES,
        "in_chans": 3,
        "classes": list(CLASSES),
        "imgsz": 64,
        "preprocessing": Preprocessing.for_size(64).to_dict(),
    }


def with_preprocessing(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(metadata: dict[str, Any]) -> None:
        metadata["preprocessing"].update(changes)

    return mutate


def with_imgsz(value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(metadata: dict[str, Any]) -> None:
        metadata["imgsz"] = value
        metadata["preprocessing"]["imgsz"] = value

    return mutate


METADATA_CASES = {
    "imgsz-text": (with_imgsz("abc"), "metadata imgsz is 'abc'"),
    "imgsz-huge": (with_imgsz(100000), "metadata imgsz is 100000"),
    "imgsz-33": (with_imgsz(33), "metadata imgsz is 33"),
    "interpolation": (with_preprocessing(interpolation="lanczos"), "preprocessing.interpolation is 'lanczos'"),
    "mean-2": (with_preprocessing(mean=[0.5, 0.5]), "preprocessing.mean holds 2 numbers, expected 3"),
    "std-zero": (with_preprocessing(std=[0.2, 0.0, 0.2]), "preprocessing.std[1] is 0.0"),
    "resize-negative": (with_preprocessing(resize=-5), "preprocessing.resize is -5"),
    "five-labels": (lambda m: m.update(classes=list("abcde")), "classes holds 5 names for 10 classes"),
    "duplicate-labels": (lambda m: m.update(classes=["same"] * 1000, num_classes=1000), "names 'same' more than once"),
    "num-classes-text": (lambda m: m.update(num_classes="ten"), "metadata num_classes is 'ten'"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_bad_checkpoint_metadata_is_refused_naming_the_field(model, tmp_path, case):
    mutate, fragment = METADATA_CASES[case]
    metadata = trained_metadata()
    mutate(metadata)
    path = save_checkpoint(model, tmp_path / "trained.safetensors", metadata)
    with pytest.raises(UserError) as exc:
        load_model(weights=path)
    assert_one_line(exc, "trained.safetensors", fragment, "re-save the checkpoint")


def test_labels_that_do_not_match_the_weights_are_refused(model, tmp_path):
    """No num_classes in the metadata: the 5 names are compared with the 10 outputs of the weights."""
    metadata = {"classes": list("abcde")}
    path = save_checkpoint(model, tmp_path / "labels.safetensors", metadata)
    with pytest.raises(UserError) as exc:
        load_model(weights=path)
    assert_one_line(exc, "labels.safetensors", "5 names but the weights have 10 outputs")


def test_metadata_that_contradicts_the_weights_is_refused(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "liar.safetensors", {"size": "52m", "num_classes": NUM_CLASSES})
    with pytest.raises(UserError) as exc:
        load_model(weights=path)
    assert_one_line(exc, "liar.safetensors", "metadata size is '52m' but the weights are '26m'")


def test_good_metadata_loads_and_exports_with_its_own_preprocessing(cli, model, tmp_path):
    """The control: what `train` writes passes the schema, and the export uses it."""
    metadata = trained_metadata()
    metadata["preprocessing"]["interpolation"] = "bicubic"
    path = save_checkpoint(model, tmp_path / "good.safetensors", metadata)
    assert load_model(weights=path).metadata["classes"] == CLASSES
    result = cli("export", "--weights", path, "--out", tmp_path / "out", "--json")
    assert result.code == 0, result.err
    manifest = result.json()
    assert manifest["preprocessing"]["interpolation"] == "bicubic"
    assert manifest["model"]["classes"] == CLASSES and manifest["model"]["imgsz"] == 64


def test_export_with_bad_metadata_is_one_line_and_writes_nothing(cli, model, tmp_path):
    metadata = trained_metadata()
    with_imgsz(100000)(metadata)
    path = save_checkpoint(model, tmp_path / "huge.safetensors", metadata)
    result = cli("export", "--weights", path, "--out", tmp_path / "out")
    assert_one_line_error(result, "huge.safetensors", "metadata imgsz is 100000", "from 32 to 2048")
    assert not (tmp_path / "out").exists()


# -- checkpoint tensors ------------------------------------------------------------------------------
def damaged_state(model, change: str) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if change == "int64":
        state["head.fc2.bias"] = state["head.fc2.bias"].long()
    elif change == "bool":
        state["head.fc2.bias"] = state["head.fc2.bias"] > 0
    elif change == "nan":
        state["head.fc2.weight"][0, 0] = math.nan
    elif change == "inf":
        state["stem.conv_bn.conv.weight"].view(-1)[3] = -math.inf
    return state


@pytest.mark.parametrize(
    "change,fragment",
    [
        ("int64", "tensor head.fc2.bias is int64; Mobile-Former weights are floating point"),
        ("bool", "tensor head.fc2.bias is bool; Mobile-Former weights are floating point"),
        ("nan", "tensor head.fc2.weight holds NaN/Inf"),
        ("inf", "tensor stem.conv_bn.conv.weight holds NaN/Inf"),
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_float_or_non_finite_tensors_are_named_at_load(model, tmp_path, change, fragment, suffix):
    path = tmp_path / f"{WEIGHTS_FILE.split('.')[0]}{suffix}"
    state = damaged_state(model, change)
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(UserError) as exc:
        read_checkpoint(path)
    assert_one_line(exc, f"{path.name}: {fragment}")


def test_batchnorm_step_counters_stay_allowed(model, tmp_path):
    counters = [k for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(model.state_dict()[k].dtype == torch.int64 for k in counters)
    path = save_checkpoint(model, tmp_path / "ok.safetensors")
    assert load_model(weights=path).num_classes == NUM_CLASSES


def test_verification_of_nan_weights_is_not_reached_an_error_names_them(cli, model, tmp_path):
    """Before: 'max abs error inf ... top-1 100%' at verification; now the tensor is named at load."""
    path = tmp_path / "nan.safetensors"
    save_file(damaged_state(model, "nan"), str(path))
    result = cli("export", "--weights", path, "--out", tmp_path / "out")
    assert_one_line_error(result, "nan.safetensors: tensor head.fc2.weight holds NaN/Inf")


# -- pickles -----------------------------------------------------------------------------------------
class Marker:
    """Unpickling this would create the marker file: proof that no pickle was executed if it is absent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_bare_pickle_is_refused_for_safety_and_never_run(model, tmp_path, protocol):
    marker = tmp_path / "pickle-ran"
    path = tmp_path / f"evil{protocol}.pt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": model.state_dict(), "payload": Marker(marker)}, handle, protocol=protocol)
    with pytest.raises(UserError) as exc:
        load_model(weights=path)
    assert_one_line(exc, f"refusing to load {path}")
    message = str(exc.value)
    assert "corrupt" not in message
    assert ("for safety" in message or "only tensors are loaded safely" in message) and "state_dict" in message
    assert not marker.exists()


def test_a_protocol_4_pickle_of_plain_tensors_says_what_to_save_instead(model, tmp_path):
    path = tmp_path / "plain.pt"
    with path.open("wb") as handle:
        pickle.dump(model.state_dict(), handle, protocol=4)
    with pytest.raises(UserError) as exc:
        load_model(weights=path)
    assert_one_line(exc, "plain.pt", "refused for safety", "torch.load(weights_only=True)", ".safetensors")


# -- manifests ---------------------------------------------------------------------------------------
def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m[section].__setitem__(key, value)


MANIFEST_CASES = {
    "files-entry-without-sha256": (lambda m: m["files"]["model.onnx"].pop("sha256"), "files['model.onnx'].sha256"),
    "files-as-list": (lambda m: m.__setitem__("files", sorted(m["files"])), "files is ["),
    "no-files": (lambda m: m.pop("files"), "files is missing"),
    "files-entry-without-bytes": (lambda m: m["files"]["model.onnx"].pop("bytes"), "files['model.onnx'].bytes"),
    "madds-text": (_set("model", "madds", "many"), "model.madds is 'many'"),
    "no-model": (lambda m: m.pop("model"), "model is missing"),
    "no-preprocessing": (lambda m: m.pop("preprocessing"), "preprocessing is missing"),
    "no-inputs": (lambda m: m.pop("inputs"), "inputs is missing"),
    "imgsz-text": (_set("model", "imgsz", "sixty-four"), "model.imgsz is 'sixty-four'"),
    "num-classes-text": (_set("model", "num_classes", "ten"), "model.num_classes is 'ten'"),
    "num-classes-10e30": (_set("model", "num_classes", 10**30), "model.num_classes is 1000000000000000000000000000000"),
    "num-classes-bool": (_set("model", "num_classes", True), "model.num_classes is True"),
    "labels-short": (_set("model", "classes", list("abc")), "model.classes holds 3 names for 10 classes"),
    "labels-duplicate": (_set("model", "classes", ["x"] * NUM_CLASSES), "model.classes names 'x' more than once"),
    "interpolation": (_set("preprocessing", "interpolation", "lanczos"), "preprocessing.interpolation is 'lanczos'"),
    "mean-2": (_set("preprocessing", "mean", [0.5, 0.5]), "preprocessing.mean holds 2 numbers"),
    "resize-negative": (_set("preprocessing", "resize", -5), "preprocessing.resize is -5"),
    "crop-other": (_set("preprocessing", "crop", 32), "preprocessing.crop is 32"),
    "outputs-other-classes": (lambda m: m["outputs"][0]["shape"].__setitem__(1, 7), "outputs[0].shape"),
    "input-without-name": (lambda m: m["inputs"][0].pop("name"), "inputs[0].name is missing"),
    "escaping-file-name": (
        lambda m: m["files"].__setitem__("../../etc/passwd", {"sha256": "0" * 64}),
        "files names '../../etc/passwd'",
    ),
    "section-not-object": (lambda m: m.__setitem__("calibration", [1, 2]), "calibration is [1, 2], expected an object"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_corrupted_manifest_is_refused_naming_the_field(artifact_root, tmp_path, case):
    mutate, fragment = MANIFEST_CASES[case]
    copy = corrupted_copy(artifact_root, tmp_path, mutate)
    with pytest.raises(UserError) as exc:
        Artifact.open(copy)
    assert_one_line(exc, str(copy / MANIFEST_NAME), fragment, "re-export the artifact")


def test_the_unchanged_copy_opens(artifact_root, tmp_path):
    """The control for the cases above: only the mutation makes a copy fail."""
    artifact = Artifact.open(corrupted_copy(artifact_root, tmp_path, lambda m: None))
    assert (artifact.size, artifact.imgsz, artifact.num_classes, artifact.static_batch) == ("26m", 64, 10, None)
    assert artifact.preprocessing.imgsz == 64 and artifact.input_name == "images"


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "edited"])
def test_damaged_values_are_refused_even_in_an_edited_manifest(artifact_root, tmp_path, sign):
    """Unreadable values are refused at open whether or not the digest matches."""
    copy = corrupted_copy(artifact_root, tmp_path, _set("model", "num_classes", "ten"), sign=sign)
    with pytest.raises(UserError) as exc:
        Artifact.open(copy)
    assert_one_line(exc, "model.num_classes is 'ten'")


def test_an_edited_inconsistent_manifest_is_left_to_the_digest(artifact_root, tmp_path):
    """Fields that disagree, in a manifest its digest shows was edited: opened (so `verify` can list what
    changed), then refused by the digest before anything uses it; signed, the schema refuses it at open."""
    edit = _set("model", "classes", list("abc"))
    opened = Artifact.open(corrupted_copy(artifact_root, tmp_path / "edited", edit, sign=False))
    with pytest.raises(UserError, match="manifest.json changed since it was written"):
        _ = opened.preprocessing
    with pytest.raises(UserError, match="model.classes holds 3 names for 10 classes"):
        Artifact.open(corrupted_copy(artifact_root, tmp_path / "signed", edit))


@pytest.mark.parametrize("command", ["verify", "check", "eval", "parity"])
def test_commands_on_a_corrupted_manifest_are_one_line(cli, artifact_root, tmp_path, command):
    copy = corrupted_copy(artifact_root, tmp_path, _set("model", "num_classes", 10**30))
    extra = ["--targets", "onnx"] if command == "parity" else []
    assert_one_line_error(cli(command, copy, *extra), "manifest.json: model.num_classes", "re-export")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("[" * 100_000 + "]" * 100_000, "maximum recursion depth"),
        ('{"schema_version": 1, "model": {"num_classes": ' + "9" * 5000 + "}}", "digits"),
    ],
)
def test_unparseable_manifest_json_is_a_read_error(artifact_root, tmp_path, text, fragment):
    copy = corrupted_copy(artifact_root, tmp_path, lambda m: None)
    (copy / MANIFEST_NAME).write_text(text)
    with pytest.raises(UserError) as exc:
        Artifact.open(copy)
    assert_one_line(exc, f"cannot read {copy / MANIFEST_NAME}", fragment)


def test_a_real_process_on_a_corrupted_manifest_has_no_traceback(artifact_root, tmp_path):
    copy = corrupted_copy(artifact_root, tmp_path, lambda m: m["files"]["model.onnx"].pop("sha256"))
    assert_one_line_error(run_subprocess("verify", copy), "files['model.onnx'].sha256 is missing")


@pytest.mark.parametrize("command", ["parity", "eval"])
def test_comparing_an_artifact_without_weights_is_one_line(cli, artifact_root, tmp_path, command):
    copy = corrupted_copy(artifact_root, tmp_path, lambda m: None)
    (copy / WEIGHTS_FILE).unlink()
    result = cli(command, copy, "--targets", "onnx")
    assert_one_line_error(result, "cannot compare with PyTorch", f"has no {WEIGHTS_FILE}")


# -- option values -----------------------------------------------------------------------------------
ART = "<artifact>"
OPTION_CASES = [
    (["info", "--imgsz", "100000"], "--imgsz (the image size) must be a multiple of 32 from 32 to 2048"),
    (["info", "--num-classes", "100000000000"], "--num-classes must be at most 100000"),
    (["export", "--size", "26m", "--num-classes", "0"], "--num-classes must be at least 1, got 0"),
    (["export", "--size", "26m", "--seed", str(10**23)], "--seed must be at most 4294967295"),
    (
        ["export", "--size", "26m", "--imgsz", "4096"],
        "--imgsz (the image size) must be a multiple of 32 from 32 to 2048",
    ),
    (["export", "--size", "26m", "--batch", "100000"], "--batch must be at most 4096"),
    (["bench", ART, "--min-time", "inf"], "--min-time must be a positive number of seconds"),
    (["bench", ART, "--min-time", "1e300"], "--min-time must be in (0, 3600], got 1e+300"),
    (["bench", ART, "--runs", str(10**11)], "--runs must be at most 1000000"),
    (["bench", ART, "--threads", "100000"], "--threads must be at most 1024"),
    (["bench", ART, "--batches", "1,100000"], "--batches: batch sizes must be at most 4096"),
    (["verify", ART, "--atol", "-1"], "--atol must be > 0, got -1"),
    (["verify", ART, "--atol", "nan"], "--atol must be a finite number > 0, got nan"),
    (["parity", ART, "--targets", "onnx", "--min-cosine", "nan"], "--min-cosine must be a finite number in [0, 1]"),
    (["parity", ART, "--targets", "onnx", "--min-cosine", "2"], "--min-cosine must be in [0, 1], got 2"),
    (["parity", ART, "--targets", "onnx", "--min-top1", "-0.1"], "--min-top1 must be in [0, 1], got -0.1"),
    (["parity", ART, "--targets", "onnx", "--atol", "inf"], "--atol must be a finite number > 0, got inf"),
    (["parity", ART, "--targets", "onnx", "--stage-tol", "0"], "--stage-tol must be > 0, got 0"),
    (["parity", ART, "--targets", "onnx", "--n", str(10**9)], "--n must be at most 1000000"),
    (["eval", ART, "--batch", "100000"], "--batch must be at most 4096"),
    (["calibrate", ART, "--calib-size", str(10**8)], "--calib-size must be at most 1000000"),
    (["calibrate", ART, "--percentile", "nan"], "--percentile must be in (0, 100], got nan"),
    (["build-engine", ART, "--workspace", "inf"], "--workspace must be a finite number in (0, 1024], got inf"),
    (["build-engine", ART, "--batch", "0"], "--batch must be at least 1, got 0"),
    (["build-engine", ART, "--max-batch", "100000"], "--max-batch must be at most 4096"),
    (["train", "--lr", "nan"], "--lr must be a finite number in (0, 10], got nan"),
    (["train", "--seed", "-1"], "--seed must be at least 0, got -1"),
    (["train", "--epochs", "100000"], "--epochs must be at most 10000"),
    (["train", "--imgsz", "100000"], "--imgsz (the image size) must be a multiple of 32 from 32 to 2048"),
]


@pytest.mark.parametrize("args,fragment", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_an_out_of_range_option_is_one_line_naming_it(cli, artifact_root, tmp_path, args, fragment):
    args = [str(artifact_root) if a == ART else a for a in args]
    if args[0] in ("export", "train"):
        args += ["--out", str(tmp_path / ("out" if args[0] == "export" else "out.safetensors"))]
    result = cli(*args)
    assert_one_line_error(result, fragment)
    assert result.code == 1  # a bad option, never the exit code of a failed verification or parity run
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()


def test_python_callers_get_the_same_rules(artifact_root):
    with pytest.raises(UserError, match=r"--num-classes must be at least 1, got 0"):
        load_model(size="26m", num_classes=0)
    with pytest.raises(UserError, match=r"--seed must be at most"):
        export(ExportOptions(size="26m", imgsz=64, seed=2**40))
    with pytest.raises(UserError, match=r"--atol must be > 0"):
        verify_artifact(Artifact.open(artifact_root), atol=-1.0)
    with pytest.raises(UserError, match=r"--min-time must be in \(0, 3600\]"):
        timing_plan(min_time=1e300)
    with pytest.raises(UserError, match=r"label_smoothing must be in \[0, 1\), got 1"):
        check_config(TrainConfig(label_smoothing=1.0))
    with pytest.raises(UserError, match=r"--min-cosine must be a finite number in \[0, 1\], got nan"):
        thresholds_for("fp32", {"min_cosine": math.nan})


def test_a_nan_figure_fails_every_threshold_it_is_compared_with():
    """A wrong model must not pass because a figure (or a limit, before it was checked) is NaN."""
    figures = {
        "nan_count": 0,
        "inf_count": 0,
        "max_abs_error": math.nan,
        "cosine": math.nan,
        "top1_agreement": 0.1,
        "top5_agreement": math.nan,
    }
    failed = {failure.metric for failure in judge(figures, DEFAULT_THRESHOLDS["fp32"])}
    assert failed == {"max_abs_error", "cosine", "top1_agreement", "top5_agreement"}


# -- bench results for `mfdeploy report` -------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_result(artifact_root, tmp_path_factory) -> Path:
    """One real `mfdeploy bench --json` result (ONNX Runtime, batch 1, a few runs)."""
    from mfdeploy.cli import main

    path = tmp_path_factory.mktemp("bench") / "result.json"
    argv = ["bench", artifact_root, "--targets", "onnx", "--batches", "1", "--warmup", "1", "--runs", "3"]
    try:
        main([str(a) for a in argv + ["--threads", "1", "--json", path]])
    except SystemExit as exc:
        assert exc.code in (0, None), f"bench exited {exc.code}"
    return path


def _latency(value: str) -> Callable[[str], str]:
    """Replace the first mean latency by ``value``, written as raw JSON text (json.dumps cannot write 1e999)."""
    return lambda text: text.replace('"mean": ', f'"mean": {value}, "was": ', 1)


REPORT_CASES = {
    "nan-latency": (_latency("NaN"), "holds the number NaN"),
    "infinite-latency": (_latency("Infinity"), "holds the number Infinity"),
    "overflowing-latency": (_latency("1e999"), "holds the number 1e999"),
    "huge-integer": (_latency("1" + "0" * 400), "holds the number 1000"),
    "deep-nesting": (lambda text: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deep-object": (
        lambda text: text.replace(
            '"warnings": [', '"deep": ' + '{"a": ' * 5000 + "{}" + "}" * 5000 + ', "warnings": [', 1
        ),
        "nested too deeply",
    ),
}


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_report_refuses_hostile_numbers_and_nesting_naming_the_file(cli, bench_result, tmp_path, case):
    mutate, fragment = REPORT_CASES[case]
    bad = tmp_path / f"{case}.json"
    bad.write_text(mutate(bench_result.read_text()))
    result = cli("report", bench_result, bad, "--md", tmp_path / "report.md")
    assert_one_line_error(result, str(bad), fragment)
    assert not (tmp_path / "report.md").exists()


def test_report_on_the_unchanged_result_works(cli, bench_result, tmp_path):
    result = cli("report", bench_result, "--md", tmp_path / "report.md")
    assert result.code == 0, result.err
    assert (tmp_path / "report.md").is_file()
