"""Output a person can read (issue 16): coremltools' own progress bars stay off the terminal while ours
name the stage, every step that takes seconds shows progress, and the TensorRT hand-over names paths
relative to where the user is, with commands that work on the GPU host."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import CliResult

# What a tqdm bar leaves in a stream: "| 5/12 [00:00<00:00, 73.29 passes/s]", "it/s]", "ops/s]".
TQDM_BAR = re.compile(r"(it|ops|passes)/s\]|\?(it| ops| passes)/s\]|\d+%\|")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_cli(*args, cwd: Path | None = None, terminal: bool = False) -> CliResult:
    """The real entry point in a fresh interpreter. ``terminal``: rich draws its live progress as on a terminal
    (TTY_COMPATIBLE=1), so every status it shows is in stderr; otherwise stderr is a pipe, as in CI logs."""
    env = dict(os.environ, TTY_COMPATIBLE="1" if terminal else "0")
    proc = subprocess.run(
        [sys.executable, "-m", "mfdeploy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=1800,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def screen_lines(stream: str) -> list[str]:
    """The lines a terminal showed at one time or another: carriage returns split, escape codes removed."""
    return [ANSI.sub("", line).rstrip() for line in re.split(r"[\r\n]", stream) if ANSI.sub("", line).strip()]


# --- 1. coremltools' progress bars ------------------------------------------------------------------


def test_quiet_coremltools_turns_off_only_its_bars_and_keeps_its_warnings(capsys):
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.passes import pass_pipeline
    from tqdm import tqdm

    from mfdeploy.runtime.coreml_env import quiet_coremltools

    log: list[str] = []
    with quiet_coremltools(log):
        assert pass_pipeline.tqdm is not tqdm and ops._tqdm is not tqdm
        list(pass_pipeline.tqdm(range(3), desc="Running MIL default pipeline", unit=" passes"))
        list(tqdm(range(2), desc="someone else's bar", file=sys.stderr, mininterval=0))
        logging.getLogger("coremltools").warning("Saving value type of float64 into fp32")
        logging.getLogger("coremltools.child").warning("a child logger's warning")
        logging.getLogger("coremltools").warning("Saving value type of float64 into fp32")
        logging.getLogger("coremltools").error("ERROR - converting 'foo' op")
    assert pass_pipeline.tqdm is tqdm and ops._tqdm is tqdm  # restored
    err = capsys.readouterr().err
    assert "Running MIL" not in err
    assert "someone else's bar" in err  # other libraries' bars are untouched
    assert "converting 'foo' op" in err  # errors still print
    assert "float64" not in err and "child logger" not in err
    assert log == ["Saving value type of float64 into fp32", "a child logger's warning"]  # kept, once each
    assert logging.getLogger("coremltools").propagate


def test_coreml_export_shows_our_stage_and_none_of_coremltools_bars(tmp_path):
    from mfdeploy.export.coreml_manifest import ROUTINE_CONVERTER_WARNINGS

    args = ("export", "--size", "26m", "--imgsz", "64", "--num-classes", "10", "--target", "coreml")
    result = run_cli(*args, "--out", tmp_path, terminal=True)
    assert result.code == 0, result.err
    assert not TQDM_BAR.search(result.err), result.err
    for phrase in ("Converting PyTorch Frontend", "Running MIL"):
        assert phrase not in result.err
    screen = "\n".join(screen_lines(result.err))
    assert "coreml 26m" in screen and "trace and convert (coremltools)" in screen  # our bar names the stage
    manifest = json.loads((tmp_path / "mobileformer_26m" / "manifest.json").read_text())
    warnings = manifest["coreml"]["converter_warnings"]
    assert isinstance(warnings, list)
    for message in warnings:  # recorded; printed unless routine
        routine = any(r in message for r in ROUTINE_CONVERTER_WARNINGS)
        assert (f"coremltools warned: {message}" in result.err + result.out) != routine


# --- 2. progress on every step that takes seconds ----------------------------------------------------


def test_info_progress_names_each_step_on_a_terminal():
    result = run_cli("info", "--size", "26m", "--imgsz", "64", terminal=True)
    assert result.code == 0, result.err
    screen = screen_lines(result.err)
    assert any("info 26m" in line and "build the model" in line for line in screen), screen
    assert any("count params and MAdds at 64x64" in line for line in screen), screen
    assert "Mobile-Former 26m at 64x64" in result.out and "build the model" not in result.out


def test_calibrate_shows_each_step_after_the_fp32_pass(small_artifact):
    args = ("calibrate", small_artifact, "--calib-size", "16", "--calib-batch", "8")
    result = run_cli(*args, terminal=True)
    assert result.code == 0, result.err
    screen = screen_lines(result.err)
    steps = [
        "prepare the FP32 graph",
        "calibration data and FP32 statistics",
        "INT8 graph: minmax ranges",
        "FP16 graph: FP32 islands",
        "FP32 reference on",
        "fp32: ONNX Runtime CPU latency",
        "int8 vs FP32",
        "int8: ONNX Runtime CPU latency",
        "fp16 vs FP32",
        "fp16: ONNX Runtime CPU latency",
    ]
    for step in steps:
        assert any("calibrate 26m" in line and step in line for line in screen), (step, screen)
    assert any("calibrate 26m" in line and "10/10" in line and line.endswith("done") for line in screen)

    piped = run_cli(*args, "--method", "percentile", "--no-latency")  # off a terminal: the finished row
    assert piped.code == 0, piped.err
    rows = [line for line in piped.err.splitlines() if line.startswith("calibrate 26m")]
    assert len(rows) == 1 and "7/7" in rows[0] and rows[0].endswith("done"), piped.err  # 2 + 2 graphs + 3 checks
