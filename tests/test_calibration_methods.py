"""Each INT8 calibration method keeps its graph and report (calibration/<method>/), `--method all` compares
the three from one statistics run and installs the best as model.int8.onnx, calibration.md leads with the
verdict and the agreement, and a run of one precision keeps the other precision's graph listed (issue 16,
points 5 and 7). Real ONNX Runtime on the small 26m artifact (64 px, random weights), built-in images."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from mfdeploy.artifacts import CALIBRATION_METHODS, OK, Artifact, check_files, remake_command
from mfdeploy.calibration.selection import select_method

CHEAP = ("--calib-size", "8", "--calib-batch", "8", "--no-latency")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(root) -> dict:
    return json.loads((root / "manifest.json").read_text())


def sections(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, re.M)


def test_method_all_installs_the_best_and_every_method_keeps_its_files(cli, small_artifact):
    root = small_artifact
    result = cli("calibrate", root, "--method", "all", *CHEAP, "--json")
    assert result.code == 0, result.err
    report = result.json()

    # one statistics run for the three methods
    assert not report["stats"]["reused"] and len(list((root / "calibration").glob("stats-*.npz"))) == 1
    # three graphs and three reports, each its own method's, every file in the manifest and intact
    files = manifest(root)["files"]
    for method in CALIBRATION_METHODS:
        folder = root / "calibration" / method
        own = json.loads((folder / "calibration.json").read_text())
        assert own["method"] == method and own["int8"]["file"] == f"calibration/{method}/model.int8.onnx"
        assert own["evaluation"]["graphs"]["int8"]["vs_fp32"] == report["methods"][method]["vs_fp32"]
        assert (folder / "calibration.md").read_text().startswith(f"# INT8 calibration with {method}:")
        for name in ("model.int8.onnx", "calibration.json", "calibration.md"):
            assert f"calibration/{method}/{name}" in files
    assert len({sha256(root / "calibration" / m / "model.int8.onnx") for m in CALIBRATION_METHODS}) == 3
    opened = Artifact.open(root)
    assert {c.name: c.status for c in check_files(opened)} == {"manifest.json": OK, **{name: OK for name in files}}

    # the installed graph is the chosen method's, and the chosen one is the best by cosine in the JSON
    selection = report["selection"]
    chosen = selection["chosen"]
    cosines = {m: entry["vs_fp32"]["cosine"] for m, entry in report["methods"].items()}
    assert selection["metric"] == "cosine" and cosines[chosen] == max(cosines.values())
    assert [r["method"] for r in selection["ranking"]][0] == chosen
    installed = root / "model.int8.onnx"
    assert sha256(installed) == sha256(root / "calibration" / chosen / "model.int8.onnx")
    assert files["model.int8.onnx"]["sha256"] == sha256(installed)
    calibration = manifest(root)["calibration"]
    assert calibration["method"] == chosen and calibration["int8"]["source"] == f"calibration/{chosen}/model.int8.onnx"
    assert calibration["selected_by"]["metric"] == "cosine" and chosen in calibration["selected_by"]["why"]
    assert calibration["graphs"] == {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert set(calibration["methods"]) == set(CALIBRATION_METHODS)
    for method in CALIBRATION_METHODS:
        assert set(report["methods"][method]["clipped_share"]) == {"mean", "max"}
    # the summary says which metric chose and why
    assert f"model.int8.onnx is {chosen}, chosen by --select cosine: {selection['why']}" in result.err
    assert all(re.search(rf"^  [ *] {m} ", result.err, re.M) for m in CALIBRATION_METHODS), result.err

    # calibration.md: the verdict first, then the agreement, then the comparison
    markdown = (root / "calibration.md").read_text()
    lines = markdown.splitlines()
    assert lines[0] == "# Calibration report: Mobile-Former 26m" and lines[2].startswith("**Verdict: PASS")
    assert sections(markdown)[:2] == ["Agreement with FP32 on held-out images", "INT8 calibration methods compared"]
    assert f"| **{chosen}** (installed) |" in markdown and f"**model.int8.onnx is {chosen}**" in markdown
    assert "untrained model (random weights)" in markdown.split("## Agreement")[0]
    # FP32 islands grouped: one row per reason, the rows add up to every island
    islands, groups = report["fp16"]["fp32_islands"], report["fp16"]["fp32_island_groups"]
    assert len(groups) < len(islands) and sum(g["nodes"] for g in groups) == len(islands)
    island_rows = [r for r in markdown.split("## FP16 graph: FP32 islands")[1].split("##")[0].splitlines() if "|" in r]
    assert len(island_rows) == 2 + len(groups)
    for group in groups:
        assert len([r for r in island_rows if r.startswith(f"| {group['reason']} |")]) == 1, group["reason"]
    assert "| LayerNormalization kept FP32 (policy; --fp16-norm allows FP16) |" in markdown

    # remake commands name the method (and precision) of each new file
    assert remake_command(opened, "calibration/entropy/model.int8.onnx") == (
        f"mfdeploy calibrate {root} --method entropy --precision int8 --calib-size 8"
    )
    percentile = remake_command(opened, "calibration/percentile/calibration.md")
    assert "--method percentile --percentile 99.99 --precision int8" in percentile
    assert f"--method {chosen}" in remake_command(opened, "model.int8.onnx")
    assert (
        remake_command(opened, "calibration.json")
        == f"mfdeploy calibrate {root} --method all --select cosine --calib-size 8"
    )

    # a later single-method run installs that method and leaves the other methods' files as they were
    other = next(m for m in CALIBRATION_METHODS if m != chosen)
    kept = {m: sha256(root / "calibration" / m / "calibration.json") for m in CALIBRATION_METHODS if m != other}
    again = cli("calibrate", root, "--method", other, "--precision", "int8", *CHEAP, "--json")
    assert again.code == 0, again.err
    assert again.json()["stats"]["reused"] and again.json()["selection"] is None
    assert sha256(installed) == sha256(root / "calibration" / other / "model.int8.onnx")
    assert {m: sha256(root / "calibration" / m / "calibration.json") for m in kept} == kept
    calibration = manifest(root)["calibration"]
    assert calibration["method"] == other and calibration["selected_by"] is None
    assert set(calibration["methods"]) == set(CALIBRATION_METHODS)
    assert calibration["graphs"] == {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    files = manifest(root)["files"]
    assert all(f"calibration/{m}/model.int8.onnx" in files for m in CALIBRATION_METHODS)
    assert all(c.status == OK for c in check_files(Artifact.open(root)))


def test_precision_int8_after_fp16_keeps_the_fp16_graph_listed(cli, small_artifact):
    """Before: the manifest's calibration section, calibration.json/md and the verdict listed only the
    int8 graph, and recorded the int8 run's --fp16-norm for the FP16 graph it had not written."""
    root = small_artifact
    first = cli("calibrate", root, "--precision", "fp16", "--fp16-norm", *CHEAP, "--json")
    assert first.code == 0, first.err
    islands = len(first.json()["fp16"]["fp32_islands"])
    fp16 = sha256(root / "model.fp16.onnx")

    second = cli("calibrate", root, "--precision", "int8", *CHEAP, "--json")
    assert second.code == 0, second.err
    calibration = manifest(root)["calibration"]
    assert calibration["graphs"] == {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert set(calibration["agreement"]) == {"int8", "fp16"} and calibration["fp32_islands"] == islands
    assert calibration["norms_kept_fp32"] is False  # the FP16 graph's own setting, not the int8 run's
    report = json.loads((root / "calibration.json").read_text())
    assert report["fp16"]["kept"] and len(report["fp16"]["fp32_islands"]) == islands
    assert set(report["verdict"]["precisions"]) == {"int8", "fp16"}
    assert sha256(root / "model.fp16.onnx") == fp16
    markdown = (root / "calibration.md").read_text()
    assert "## FP16 graph: FP32 islands" in markdown and "| model.fp16.onnx |" in markdown
    # the readiness lint judges the FP16 graph by the setting it was made with (FP16 norms allowed)
    assert cli("check", root).code == 0

    # and the other way round: an FP16 run keeps the INT8 graph, its method and its own files
    third = cli("calibrate", root, "--precision", "fp16", *CHEAP, "--json")
    assert third.code == 0, third.err
    calibration = manifest(root)["calibration"]
    assert calibration["graphs"] == {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert calibration["method"] == "minmax" and calibration["norms_kept_fp32"] is True
    assert third.json()["int8"]["kept"] and "int8" in third.json()["verdict"]["precisions"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("calibrate", "ART", "--select", "top1"), "--select picks among the methods of --method all"),
        (("calibrate", "ART", "--method", "all", "--select", "median"), "unknown --select 'median'"),
        (("calibrate", "ART", "--method", "all", "--precision", "fp16"), "add int8 to --precision"),
        (("calibrate", "ART", "--method", "best"), "choose one of minmax, entropy, percentile, all"),
        (
            ("export", "--size", "26m", "--target", "trt", "--method", "all", "--precision", "fp16"),
            "--method all compares the INT8 calibration methods; it needs --precision int8, not fp16",
        ),
        (("export", "--size", "26m", "--target", "onnx", "--select", "top1"), "--select: TensorRT options"),
    ],
)
def test_bad_method_and_select_are_one_line(cli, tmp_path, args, fragment):
    args = [str(tmp_path / "mobileformer_26m") if a == "ART" else a for a in args]
    result = cli(*args, "--out", tmp_path) if args[0] == "export" else cli(*args)
    assert result.code == 1 and "Traceback" not in result.err
    assert fragment in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.err
    assert not any(tmp_path.iterdir())  # refused before any work


def figures(cosine, top1, top5=1.0, error=1e-3):
    return {"cosine": cosine, "top1_agreement": top1, "top5_agreement": top5, "max_abs_error": error}


def test_selection_ties_are_broken_in_a_fixed_stated_order():
    clear = select_method({"minmax": figures(0.99, 1.0), "entropy": figures(0.995, 0.9)}, "cosine")
    assert clear["chosen"] == "entropy" and clear["why"].startswith("entropy has the highest cosine")
    by_top1 = select_method({"minmax": figures(0.99, 1.0), "entropy": figures(0.995, 0.9)}, "top1")
    assert by_top1["chosen"] == "minmax"
    tied = {"minmax": figures(0.99, 1.0), "entropy": figures(0.995, 1.0), "percentile": figures(0.995, 1.0, error=5e-4)}
    choice = select_method(tied, "top1")
    assert choice["chosen"] == "percentile"
    assert "minmax, entropy, percentile tie on top-1 agreement at 100.0%" in choice["why"]
    assert "they tie on cosine too" in choice["why"] and "the tie goes to the lowest max abs error" in choice["why"]
    same = {m: figures(0.99, 1.0) for m in reversed(CALIBRATION_METHODS)}
    choice = select_method(same, "cosine")
    assert choice["chosen"] == "minmax" and "the first in the order minmax, entropy, percentile" in choice["why"]
    nan = select_method({"minmax": figures(float("nan"), 1.0), "entropy": figures(0.5, 1.0)}, "cosine")
    assert nan["chosen"] == "entropy"
