"""Output a person can read (issue 16): coremltools' own progress bars stay off the terminal while ours
name the stage, every step that takes seconds shows progress, and the TensorRT hand-over names paths
relative to where the user is, with commands that work on the GPU host."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_coreml_export_shows_our_stage_and_none_of_coremltools_bars(small_artifact):
    from mfdeploy.export.coreml_manifest import ROUTINE_CONVERTER_WARNINGS

    # the Core ML target added to the small ONNX artifact (the export grows it: no second ONNX export)
    tmp_path = small_artifact.parent
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


def test_steps_row_is_printed_once_finished_and_not_after_an_error(capsys, monkeypatch):
    from mfdeploy.console import steps

    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # as in a CI log
    with steps("calibrate 26m", 3) as step:
        for name in ("first", "second", "third"):
            step(name)
    rows = capsys.readouterr().err.strip().splitlines()
    assert len(rows) == 1 and rows[0].startswith("calibrate 26m") and "3/3" in rows[0] and rows[0].endswith("done")
    with pytest.raises(ValueError), steps("calibrate 26m", 3) as step:
        step("first")
        raise ValueError("the error says what went wrong")
    assert capsys.readouterr().err.strip() == ""  # the failed run's row is not left above its error line


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
        "int8 minmax vs FP32",  # each method's INT8 graph is evaluated under its own label
        "int8 minmax: ONNX Runtime CPU latency",
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


# --- 3. the TensorRT hand-over: paths as the user sees them, commands that work on the GPU host ------


def test_no_tensorrt_message_names_relative_paths_and_a_portable_command(tmp_path):
    from mfdeploy.runtime.tensorrt_env import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("this host has TensorRT and a GPU: the engine is built, there is no hand-over message")
    args = ("export", "--size", "26m", "--imgsz", "64", "--num-classes", "10", "--target", "trt")
    result = run_cli(*args, "--precision", "fp32", "--out", "artifacts", cwd=tmp_path)
    assert result.code == 3, result.err
    message = result.err[result.err.index("TensorRT engine not built") :]
    assert str(tmp_path) not in result.err + result.out and str(tmp_path.resolve()) not in result.err
    assert "The TensorRT-ready FP32 graph is artifacts/mobileformer_26m/model.onnx" in message
    assert "copy artifacts/mobileformer_26m there, then run in the folder that holds it:" in message
    assert "\n  mfdeploy build-engine mobileformer_26m --precision fp32\n" in message
    assert "exported Mobile-Former 26m (random weights, seed 0) to artifacts/mobileformer_26m/model.onnx" in result.out

    artifacts = tmp_path / "artifacts"
    engine = json.loads((artifacts / "mobileformer_26m" / "manifest.json").read_text())["tensorrt"]["engine"]
    assert engine["command"] == "mfdeploy build-engine mobileformer_26m --precision fp32"
    assert f"\n  {engine['trtexec_command']}\n" in message + "\n"
    assert "/tmp" not in json.dumps(engine) and str(tmp_path) not in json.dumps(engine)
    # Every file the trtexec command reads is where it says, seen from the folder that holds the artifact.
    onnx = next(a for a in shlex.split(engine["trtexec_command"]) if a.startswith("--onnx="))
    assert (artifacts / onnx.removeprefix("--onnx=")).is_file()

    # The stored command, run as given in the artifact's parent folder, gets as far as TensorRT itself:
    # it fails for the missing TensorRT (exit 3), not for a path.
    again = run_cli(*shlex.split(engine["command"])[1:], cwd=artifacts)
    assert again.code == 3, again.err
    assert "TensorRT engine not built" in again.err and "passed the TensorRT" in again.err
    assert "mobileformer_26m/model.onnx passed" in again.err and str(tmp_path) not in again.err


def test_display_path_is_relative_inside_the_current_folder_only(tmp_path, monkeypatch):
    from mfdeploy.fileio import display_path

    inside = tmp_path / "artifacts" / "mobileformer_52m"
    inside.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert display_path(inside) == "artifacts/mobileformer_52m"
    assert display_path("artifacts/mobileformer_52m/model.onnx") == "artifacts/mobileformer_52m/model.onnx"
    assert display_path(tmp_path) == "."
    monkeypatch.chdir(inside)
    assert display_path(tmp_path / "artifacts") == str(tmp_path / "artifacts")  # outside: absolute
    assert display_path("../other") == str(tmp_path / "artifacts" / "other")


# --- 4. the trtexec equivalent --------------------------------------------------------------------------


def _trtexec_args(command: str) -> dict[str, str]:
    parts = shlex.split(command)
    assert parts[0] == "trtexec"
    return dict(part.removeprefix("--").partition("=")[::2] for part in parts[1:])


def test_trtexec_command_reads_the_manifest_and_leaves_precision_to_the_graph(small_export):
    from mfdeploy.artifacts import Artifact
    from mfdeploy.export.tensorrt_build import BatchProfile, EngineOptions, build_command, trtexec_command

    manifest = Artifact.open(small_export).manifest
    name, (_, channels, height, width) = manifest["inputs"][0]["name"], manifest["inputs"][0]["shape"]
    graphs = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    for precision, graph in graphs.items():
        command = trtexec_command(manifest, EngineOptions(precision), "mobileformer_26m")
        args = _trtexec_args(command)
        assert args["onnx"] == f"mobileformer_26m/{graph}"
        assert args["saveEngine"] == f"mobileformer_26m/model.{precision}.plan"
        assert args["timingCacheFile"] == "mobileformer_26m/timing.cache"
        assert "stronglyTyped" in args and args["stronglyTyped"] == ""
        assert not {"fp16", "int8", "best", "calib", "precisionConstraints"} & set(args), command
        for flag, batch in (("minShapes", 1), ("optShapes", 8), ("maxShapes", 32)):
            assert args[flag] == f"{name}:{batch}x{channels}x{height}x{width}"  # 1x3x64x64 ... 32x3x64x64
        assert args["memPoolSize"] == "workspace:4096"  # the default 4 GiB, in MiB
    # The same profile and workspace build-engine is given; inside the artifact folder, bare file names.
    options = EngineOptions("int8", BatchProfile(2, 4, 16), workspace_gib=0.5)
    args = _trtexec_args(trtexec_command(manifest, options))
    assert (args["onnx"], args["optShapes"], args["maxShapes"]) == (
        "model.int8.onnx",
        "images:4x3x64x64",
        "images:16x3x64x64",
    )
    assert args["memPoolSize"] == "workspace:512"
    assert build_command(small_export, options) == (
        "mfdeploy build-engine mobileformer_26m --precision int8 --min-batch 2 --opt-batch 4 --max-batch 16 "
        "--workspace 0.5"
    )
    # A static batch needs no profile: trtexec takes the graph's own shape.
    static = dict(manifest, inputs=[dict(manifest["inputs"][0], shape=[4, 3, 64, 64])])
    assert not {"minShapes", "optShapes", "maxShapes"} & set(_trtexec_args(trtexec_command(static, EngineOptions())))


def test_readme_trtexec_example_is_what_mfdeploy_prints_for_a_default_52m():
    from mfdeploy.export.tensorrt_build import EngineOptions, trtexec_command

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("#### Building the engines with trtexec", 1)[1]
    block = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1)
    example = " ".join(line.strip().rstrip("\\").strip() for line in block.splitlines() if not line.startswith("#"))
    manifest = {"inputs": [{"name": "images", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]}
    assert example == trtexec_command(manifest, EngineOptions("int8"), "mobileformer_52m")
