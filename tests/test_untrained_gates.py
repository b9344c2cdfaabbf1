"""An untrained model's top-1 agreement is reported, not gated; a trained one's is gated; calibrate ends in
the same verdict parity would give.

The model here is built so that its INT8 graph disagrees with FP32 on the top class for every image on
any CPU while cosine stays near 1: its two leading classifier rows differ by less than half an INT8 step,
so the INT8 graph ties them (and picks the first) where FP32 separates them. Exported from a checkpoint,
the manifest calls it trained; the same folder with its manifest saying "random weights" is the
untrained case, so the two runs differ in nothing but what the manifest records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mfdeploy.artifacts import Artifact
from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.model import build_model
from mfdeploy.model.weights import save_checkpoint
from mfdeploy.thresholds import UNTRAINED_NOTE, judge, thresholds_for


def tied_top_classes_checkpoint(path: Path) -> Path:
    """A 26m (10 classes) whose classes 0 and 1 lead and are tied in INT8 but not in FP32."""
    model = build_model("26m", num_classes=10, seed=0)
    fc2 = model.head.fc2
    with torch.no_grad():
        step = fc2.weight[0].abs().max() / 127  # the per-channel INT8 step of row 0
        on_grid = torch.round(fc2.weight[0] / step) * step
        nudge = torch.sign(torch.randn(on_grid.numel(), generator=torch.Generator().manual_seed(1)))
        nudge[on_grid.abs().argmax()] = 0  # keeps row 1's absmax, hence its INT8 scale, equal to row 0's
        fc2.weight[0] = on_grid
        fc2.weight[1] = on_grid + 0.1 * step * nudge  # rounds back to row 0's INT8 values
        fc2.bias[:2] = fc2.bias[2:].max() + 5  # classes 0 and 1 lead for every image
    return save_checkpoint(model, path)


@pytest.fixture(scope="module")
def tied_trained(tmp_path_factory) -> Path:
    """The tied model exported from its checkpoint at 64 px and calibrated (INT8 only); never changed."""
    out = tmp_path_factory.mktemp("tied")
    checkpoint = tied_top_classes_checkpoint(out / "tied.safetensors")
    root = export(ExportOptions(weights=str(checkpoint), imgsz=64, out=out / "art")).artifact
    calibrate_artifact(
        Artifact.open(root), CalibrationOptions(num_images=32, precisions=("int8",), measure_latency=False)
    )
    return root


def private_copy(root: Path, tmp_path: Path, untrained: bool) -> Path:
    """A copy of ``root``; with ``untrained`` its manifest records random weights, as a plain export does."""
    copy = tmp_path / root.name
    shutil.copytree(root, copy)
    if untrained:
        artifact = Artifact.open(copy)
        artifact.manifest["model"]["source"] = {"weights": "random", "seed": 0}
        artifact.save()
    return copy


def parity_json(cli, root: Path, tmp_path: Path, *extra: str):
    out = tmp_path / "parity"
    result = cli(
        "parity", root, "--targets", "onnx,onnx-int8", "--n", "16", "--json", f"{out}.json", "--md", f"{out}.md",
        "--html", f"{out}.html", *extra,
    )  # fmt: skip
    report = json.loads(Path(f"{out}.json").read_text())
    return result, report, {r["target"]: r for r in report["results"]}


def test_trained_model_is_gated_on_top1(cli, tied_trained, tmp_path):
    result, report, by_target = parity_json(cli, tied_trained, tmp_path)
    int8 = by_target["onnx-int8"]
    assert result.code == 1 and int8["status"] == "failed"
    assert [f["metric"] for f in int8["failures"]] == ["top1_agreement"], int8["failures"]
    assert int8["figures"]["top1_agreement"] < 0.9 and int8["figures"]["cosine"] >= 0.99
    assert int8["thresholds"]["min_top1"] == 0.9 and by_target["onnx"]["status"] == "passed"
    assert report["untrained"] is False and report["untrained_note"] is None
    assert "untrained" not in result.out and "not gated" not in (tmp_path / "parity.md").read_text()


def test_untrained_model_reports_top1_without_gating_it(cli, tied_trained, tmp_path):
    root = private_copy(tied_trained, tmp_path, untrained=True)
    result, report, by_target = parity_json(cli, root, tmp_path)
    int8 = by_target["onnx-int8"]
    assert result.code == 0, result.out + result.err
    assert int8["status"] == "passed" and int8["figures"]["top1_agreement"] < 0.9  # reported, not gated
    assert int8["thresholds"]["min_top1"] is None and int8["thresholds"]["min_cosine"] == 0.99
    assert report["untrained"] is True and report["untrained_note"] == UNTRAINED_NOTE
    assert result.out.count(UNTRAINED_NOTE) == 1 and "overall: PASS" in result.out
    markdown = (tmp_path / "parity.md").read_text()
    assert markdown.count(UNTRAINED_NOTE) == 1
    assert "int8: max abs error not checked, cosine >= 0.99, top-1 not gated (untrained model)" in markdown
    assert "top-1 not gated (untrained model)" in (tmp_path / "parity.html").read_text()


def test_an_explicit_top1_limit_applies_to_an_untrained_model(cli, tied_trained, tmp_path):
    root = private_copy(tied_trained, tmp_path, untrained=True)
    result, _, by_target = parity_json(cli, root, tmp_path, "--min-top1", "0.9")
    assert result.code == 1
    assert [f["metric"] for f in by_target["onnx-int8"]["failures"]] == ["top1_agreement"]


def test_untrained_thresholds_keep_every_other_gate():
    figures = {"max_abs_error": 2e-3, "cosine": 0.5, "top1_agreement": 0.0, "top5_agreement": 0.0}
    figures |= {"nan_count": 1, "inf_count": 0}
    failed = {f.metric for f in judge(figures, thresholds_for("fp32", untrained=True))}
    assert failed == {"nan_inf", "max_abs_error", "cosine"}
    assert {f.metric for f in judge(figures, thresholds_for("fp32"))} == failed | {"top1_agreement", "top5_agreement"}
    assert thresholds_for("int8", {"min_top5": 0.5}, untrained=True).min_top5 == 0.5


def test_calibrate_ends_in_parity_verdict_and_still_exits_0(cli, tied_trained, tmp_path):
    root = private_copy(tied_trained, tmp_path, untrained=False)
    result = cli("calibrate", root, "--calib-size", "32", "--precision", "int8", "--no-latency")
    assert result.code == 0, result.err  # the graph is written; parity is the gate
    verdict = json.loads((root / "calibration.json").read_text())["verdict"]
    assert verdict["passed"] is False and verdict["precisions"]["int8"]["status"] == "failed"
    assert [f["metric"] for f in verdict["precisions"]["int8"]["failures"]] == ["top1_agreement"]
    assert "verdict: FAIL: int8 FAIL (top1_agreement" in result.out and "calibrate exits 0" in result.out
    markdown = (root / "calibration.md").read_text().splitlines()
    assert markdown[2].startswith("**Verdict: FAIL: int8 FAIL (top1_agreement") and "exits 0" in markdown[4]
    assert Artifact.open(root).manifest["calibration"]["verdict"] == "failed"


def test_calibrate_verdict_for_an_untrained_model(cli, tied_trained, tmp_path):
    root = private_copy(tied_trained, tmp_path, untrained=True)
    result = cli("calibrate", root, "--calib-size", "32", "--precision", "int8", "--no-latency", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["verdict"]["passed"] is True and report["untrained_note"] == UNTRAINED_NOTE
    assert report["evaluation"]["graphs"]["int8"]["vs_fp32"]["top1_agreement"] < 0.9
    assert report["verdict"]["precisions"]["int8"]["thresholds"]["min_top1"] is None
    assert json.loads((root / "calibration.json").read_text())["verdict"] == report["verdict"]
    assert result.err.count(UNTRAINED_NOTE) == 1  # the human summary goes to stderr when JSON takes stdout
    markdown = (root / "calibration.md").read_text().splitlines()
    assert markdown[2].startswith("**Verdict: PASS: int8 PASS") and UNTRAINED_NOTE in markdown[4]


def test_eval_says_an_untrained_models_figures_mean_nothing(cli, tied_trained, tmp_path):
    root = private_copy(tied_trained, tmp_path, untrained=True)
    result = cli("eval", root, "--targets", "onnx", "--json", tmp_path / "e.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["untrained"] is True and report["untrained_note"] == UNTRAINED_NOTE
    assert result.out.count(UNTRAINED_NOTE) == 1
