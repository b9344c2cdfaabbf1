"""One meaning per flag across commands: --json [PATH|-], --batch vs --batches, defaults from the library."""

from __future__ import annotations

import json

import pytest

from mfdeploy.calibration.pipeline import CalibrationOptions
from mfdeploy.cli.options import default
from mfdeploy.cli.output import normalise_json_flag
from mfdeploy.export.tensorrt_build import EngineOptions


def test_bare_json_and_dash_write_json_to_stdout_and_the_summary_to_stderr(cli):
    for args in (["--json"], ["--json", "-"]):
        result = cli("info", "--size", "26m", "--imgsz", "64", *args)
        assert result.code == 0, result.err
        assert json.loads(result.out)["size"] == "26m"
        assert "Mobile-Former 26m" in result.err


def test_json_path_writes_the_file_and_the_summary_to_stdout(cli, tmp_path):
    out = tmp_path / "info.json"
    result = cli("info", "--size", "26m", "--imgsz", "64", "--json", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["size"] == "26m"
    assert "Mobile-Former 26m" in result.out


def test_a_bare_json_before_another_option_takes_no_value(cli):
    result = cli("info", "--json", "--size", "26m", "--imgsz", "64")
    assert result.code == 0, result.err
    assert json.loads(result.out)["imgsz"] == 64
    assert normalise_json_flag(["x", "--json", "--size", "1"]) == ["x", "--json", "-", "--size", "1"]
    assert normalise_json_flag(["x", "--json", "out.json"]) == ["x", "--json", "out.json"]


@pytest.mark.parametrize("where", ["stdout", "file"])
def test_a_failure_writes_an_error_object_where_the_json_goes(cli, tmp_path, where):
    target = "-" if where == "stdout" else tmp_path / "err.json"
    result = cli("info", "--size", "9m", "--json", target)
    assert result.code == 1
    text = result.out if where == "stdout" else target.read_text()
    error = json.loads(text)["error"]
    assert error["exit_code"] == 1 and "unknown size '9m'" in error["message"]
    assert "unknown size '9m'" in result.err and "Traceback" not in result.err


def test_json_dash_never_writes_a_file_named_dash(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("parity", tmp_path / "missing", "--json", "-")
    assert result.code == 1
    assert not (tmp_path / "-").exists()
    assert "error" in json.loads(result.out)


def test_a_flag_given_with_its_default_value_is_still_refused_for_a_stage_that_does_not_run(cli, tmp_path):
    """The old check compared values with retyped literals, so `--calib-size 512` slipped through."""
    calib_size = str(default(CalibrationOptions, "num_images"))
    result = cli("export", "--size", "26m", "--target", "onnx", "--calib-size", calib_size, "--out", tmp_path)
    assert result.code == 1 and "--calib-size: TensorRT options, not used by --target onnx" in result.err
    workspace = str(default(EngineOptions, "workspace_gib"))
    result = cli("export", "--size", "26m", "--target", "coreml", "--workspace", workspace, "--out", tmp_path)
    assert result.code == 1 and "--workspace" in result.err
    assert not any(tmp_path.iterdir())


def test_export_help_groups_the_stage_options(cli):
    result = cli("export", "--help")
    assert result.code == 0
    for panel in ("TensorRT", "Core ML", "Calibration"):
        assert panel in result.out
    default_size = default(CalibrationOptions, "num_images")
    assert f"[default: {default_size}]" in result.out


def test_bench_takes_batch_lists_as_batches_and_refuses_the_old_flag(cli, tmp_path):
    result = cli("bench", tmp_path, "--batch", "1,8")
    assert result.code != 0 and "--batch" in result.err
