"""`mfdeploy bench` and `mfdeploy report` with real runners (PyTorch, ONNX Runtime) on a real exported
artifact, real child processes and real PNGs. Latencies are checked to be positive and finite and to
obey the order statistics impose (min <= p50 <= ... <= max); no test asserts how fast anything is."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from mfdeploy.artifacts import Artifact
from mfdeploy.benchmark.cell import CellRequest, measure_cell
from mfdeploy.benchmark.memory import gpu_device_used_bytes
from mfdeploy.benchmark.noop import NOOP_TARGET, NoopRunner
from mfdeploy.errors import UserError
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.runtime.base import LayerRecord
from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from mfdeploy.runtime.registry import TARGETS
from mfdeploy.runtime.timing import TimingPlan

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "bench-result.schema.json").read_text())
QUICK = TimingPlan(warmup=1, runs=5)
GPU_METHODS = ("nvml-process", "nvidia-smi-process", "nvml-device-delta")
STAGES = {"stem", "lite_bneck", *(f"blocks.{i}" for i in range(8)), "final_to_former", "channel_conv", "head"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, small_export) -> Artifact:
    copy = tmp_path_factory.mktemp("bench") / small_export.name
    shutil.copytree(small_export, copy)
    return Artifact.open(copy)


@pytest.fixture(scope="module")
def runs(artifact, tmp_path_factory):
    """Two real `mfdeploy bench` runs as two 'devices': all the common targets, and ONNX Runtime profiled."""
    from mfdeploy.cli import main

    folder = tmp_path_factory.mktemp("runs")
    first, second = folder / "device-a.json", folder / "device-b.json"
    common = ["--warmup", "1", "--runs", "5", "--threads", "1"]
    targets = "torch,onnx,onnx-fp16,onnx-int8,trt-fp16,trt-int8,coreml"
    for argv in (
        ["bench", artifact.root, "--targets", targets, "--batches", "1,2", "--device-name", "device A",
         "--json", first],
        ["bench", artifact.root, "--targets", "onnx", "--batches", "1,4", "--device-name", "device B", "--profile",
         "--top", "5", "--json", second],
    ):  # fmt: skip
        try:
            main([str(a) for a in argv + common])
        except SystemExit as exc:
            assert exc.code in (0, None), f"bench exited {exc.code}"
    return first, second


def assert_one_line_error(result, *fragments: str) -> None:
    """A user mistake: non-zero exit, one line on stderr holding every fragment, no traceback."""
    assert result.code != 0 and "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_latency_fields(entry: dict) -> None:
    latency = entry["latency_ms"]
    values = [latency[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
    assert all(math.isfinite(v) and v > 0 for v in values), latency
    assert values == sorted(values) and latency["min"] <= latency["mean"] <= latency["max"]
    assert latency["n"] == len(entry["samples_ms"])
    assert entry["throughput_ips"] == pytest.approx(entry["batch"] * 1e3 / latency["mean"], rel=1e-3)
    assert entry["first_load_ms"] > 0 and entry["first_inference_ms"] > 0


# -- one cell, in this process ---------------------------------------------------------------------
@pytest.mark.parametrize("target", ["torch", "onnx"])
def test_a_cell_measures_a_real_runner(artifact, target):
    entry = measure_cell(CellRequest(str(artifact.root), target, batch=3, plan=QUICK, options={"threads": 1}))
    assert entry["status"] == "ok", entry
    assert_latency_fields(entry)
    assert entry["latency_ms"]["n"] == 5 and entry["batch"] == 3 and entry["precision"] == "fp32"
    madds = artifact.manifest["model"]["madds"]
    assert entry["gmacs"] == pytest.approx(madds * 3 / (entry["latency_ms"]["mean"] / 1e3) / 1e9, rel=1e-3)
    spec = TARGETS[target]
    assert entry["model_file"] == {
        "name": spec.file,
        "bytes": artifact.manifest["files"][spec.file]["bytes"],
        "sha256": artifact.manifest["files"][spec.file]["sha256"],
    }
    memory = entry["memory"]
    assert memory["isolation"] == "shared"
    # A CPU target allocates no GPU memory of its own, but on a host with an NVIDIA GPU and nvidia-ml-py the
    # figure may be a device-wide delta (other processes' allocations): only its form holds on every host.
    gpu = memory["gpu"]
    assert gpu is None or (gpu["mb"] >= 0 and gpu["method"] in GPU_METHODS), gpu
    if gpu_device_used_bytes() is None and shutil.which("nvidia-smi") is None:
        assert gpu is None  # nothing here can see a GPU, so nothing may be reported
    assert memory["rss_peak_mb"] > 0 and memory["rss_increase_mb"] >= 0
    assert entry["profile"] is None and entry["caveat"] is None


def test_the_noop_runner_is_measured_like_a_target(artifact):
    entry = measure_cell(CellRequest(str(artifact.root), NOOP_TARGET, batch=2, plan=QUICK))
    assert entry["status"] == "ok" and "harness" in entry["caveat"]
    assert all(s >= 0 for s in entry["samples_ms"]) and entry["model_file"] is None


class HookedRunner(NoopRunner):
    """Stands in for a backend this host lacks (TensorRT, Core ML) to check how the benchmark consumes the
    optional runner hooks; the real runners implement the same contract (runtime/base.py)."""

    backend = "hooked"
    benchmark_caveat = "a stand-in runner"

    def __init__(self, *args, profile: bool = False) -> None:
        super().__init__(*args)
        self.profile = profile
        self.compute_ms: list[float] = []

    def run(self, images):
        self.compute_ms.append(0.25 * images.shape[0])
        return super().run(images)

    def pop_device_timings(self):
        taken, self.compute_ms = self.compute_ms, []
        return {"gpu_compute": taken}

    def profile_layers(self):
        if not self.profile:
            return None
        return [
            LayerRecord("/blocks.0/mobile/conv", "conv", estimated_cost=0.6, device="NeuralEngine"),
            LayerRecord("/head/fc1", "linear", estimated_cost=0.3, device="CPU"),
            LayerRecord("cast_3", "cast", estimated_cost=0.1, device="CPU"),
        ]


def test_runner_hooks_reach_the_result(artifact):
    def factory(target, art, profile=False, **_):
        return HookedRunner(3, art.imgsz, art.num_classes, profile=profile)

    plan = TimingPlan(warmup=4, runs=6)
    entry = measure_cell(CellRequest(str(artifact.root), "hooked", batch=2, plan=plan, profile=True), factory)
    assert entry["status"] == "ok" and entry["caveat"] == "a stand-in runner"
    compute = entry["device_timings_ms"]["gpu_compute"]
    assert compute["n"] == 6 and compute["p50"] == 0.5  # the timed runs only: warm-up and first run dropped
    profile = entry["profile"]
    assert profile["available"] and profile["metric"] == "estimated_cost"
    assert [(s["stage"], s["share"]) for s in profile["stages"]] == [("blocks.0", 0.6), ("head", 0.3), ("other", 0.1)]
    assert profile["devices"] == {"NeuralEngine": 0.6, "CPU": 0.4}
    torch_entry = measure_cell(CellRequest(str(artifact.root), "torch", batch=1, plan=QUICK, profile=True))
    assert torch_entry["profile"] == {"available": False, "note": "torch has no per-layer profiler in mfdeploy"}


class ProfiledRunner(HookedRunner):
    """A stand-in for a TensorRT engine built with a 1..32 batch profile that was asked for CUDA graphs: the
    real TensorRTRunner answers these two hooks from get_tensor_profile_shape and its capture."""

    def batch_unsupported_reason(self, batch):
        from mfdeploy.runtime.tensorrt_runner import profile_refusal

        return profile_refusal((1, 8, 32), batch, "fp16", "mfdeploy build-engine art --precision fp16")

    def cuda_graphs_state(self):
        return {"requested": True, "used": False, "fallback": "CUDA graph capture failed (stand-in)"}


def test_a_batch_outside_the_engine_profile_is_skipped_for_that_batch_alone(artifact):
    def factory(target, art, profile=False, **_):
        return ProfiledRunner(3, art.imgsz, art.num_classes, profile=profile)

    entry = measure_cell(CellRequest(str(artifact.root), "trt-fp16", batch=64, plan=QUICK), factory)
    assert entry["status"] == "skipped" and entry["batch_specific"]
    assert "covers batch 1..32 (opt 8), not 64" in entry["reason"]
    assert "`mfdeploy build-engine art --precision fp16 --min-batch 1 --opt-batch 8 --max-batch 64`" in entry["reason"]
    ok = measure_cell(CellRequest(str(artifact.root), "trt-fp16", batch=2, plan=QUICK), factory)
    assert ok["status"] == "ok" and "cuda_graphs" not in ok  # not requested: not recorded


def test_cuda_graphs_are_recorded_per_cell_and_ignored_by_other_backends(artifact):
    def factory(target, art, profile=False, **_):
        return ProfiledRunner(3, art.imgsz, art.num_classes, profile=profile)

    asked = {"cuda_graphs": True}
    stand_in = measure_cell(CellRequest(str(artifact.root), "trt-fp16", batch=2, plan=QUICK, options=asked), factory)
    assert stand_in["cuda_graphs"] == {
        "requested": True,
        "used": False,
        "fallback": "CUDA graph capture failed (stand-in)",
    }
    onnx = measure_cell(CellRequest(str(artifact.root), "onnx", batch=1, plan=QUICK, options=asked))
    assert onnx["status"] == "ok" and onnx["cuda_graphs"]["requested"] and not onnx["cuda_graphs"]["used"]
    assert "onnxruntime ignores --cuda-graphs" in onnx["cuda_graphs"]["fallback"]
    cuda_graphs_schema = SCHEMA["properties"]["results"]["items"]["properties"]["cuda_graphs"]
    for record in (stand_in["cuda_graphs"], onnx["cuda_graphs"]):
        jsonschema.validate(record, cuda_graphs_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"requested": True}, cuda_graphs_schema)


def test_bench_cuda_graphs_flag_reaches_settings_and_warnings(cli, artifact):
    result = cli("bench", artifact.root, "--targets", "onnx", "--batches", "1", "--runs", "2", "--warmup", "0",
                 "--cuda-graphs", "--json", "-")  # fmt: skip
    assert result.code == 0, result.err
    document = result.json()
    jsonschema.validate(document, SCHEMA)
    assert document["settings"]["cuda_graphs"] is True
    assert document["results"][0]["cuda_graphs"]["used"] is False
    assert any("--cuda-graphs not used: onnxruntime ignores" in w for w in document["warnings"])


class FailingProfileRunner(HookedRunner):
    """A runner whose profiler raises, as Core ML's compute plan does where it cannot be read."""

    error: Exception = RuntimeError("compute plan could not be loaded")

    def profile_layers(self):
        if not self.profile:
            return None
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RuntimeError("compute plan could not be loaded"), "hooked profile failed: RuntimeError: compute plan"),
        (UserError("needs macOS 14.4 or later; this is macOS 13.6"), "hooked profile unavailable: needs macOS 14.4"),
    ],
)
def test_a_failing_profile_keeps_the_measured_latency(artifact, error, expected):
    """Through the real bench cell: the profile step raising is reported in the profile entry, and the
    cell keeps the latency it measured before (it used to become a "failed" cell)."""

    def factory(target, art, profile=False, **_):
        runner = FailingProfileRunner(3, art.imgsz, art.num_classes, profile=profile)
        runner.error = error
        return runner

    plan = TimingPlan(warmup=1, runs=6)
    entry = measure_cell(CellRequest(str(artifact.root), "hooked", batch=2, plan=plan, profile=True), factory)
    assert entry["status"] == "ok", entry
    assert entry["latency_ms"]["n"] == 6 and len(entry["samples_ms"]) == 6 and entry["throughput_ips"] > 0
    profile = entry["profile"]
    assert profile["available"] is False and profile["note"].startswith(expected)
    assert profile.get("failed", False) == isinstance(error, RuntimeError)
    if isinstance(error, RuntimeError):
        assert profile["error"] == "RuntimeError: compute plan could not be loaded"
    jsonschema.validate(profile, SCHEMA["properties"]["results"]["items"]["properties"]["profile"])


@pytest.mark.parametrize("target", ["onnx-fp16", "onnx-int8", "trt-fp16", "coreml"])
def test_a_target_that_cannot_run_here_is_skipped_with_the_reason(artifact, target):
    if artifact.path(TARGETS[target].file).exists():
        pytest.skip(f"this artifact has {TARGETS[target].file}")
    entry = measure_cell(CellRequest(str(artifact.root), target, batch=1, plan=QUICK))
    from mfdeploy.runtime.registry import runner_class

    # what the host lacks (TensorRT, coremltools) comes first where it lacks it, then the missing file
    host_reason = runner_class(target).host_unavailable_reason()
    assert entry["status"] == "skipped" and TARGETS[target].file in entry["reason"]
    assert host_reason is None or entry["reason"].startswith(host_reason)
    assert not entry.get("batch_specific")


def test_a_provider_this_onnxruntime_lacks_is_skipped_with_the_reason(artifact):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    entry = measure_cell(CellRequest(str(artifact.root), "onnx", batch=1, plan=QUICK, options={"provider": "cuda"}))
    assert entry["status"] == "skipped" and "CUDAExecutionProvider is not available here" in entry["reason"]


def test_a_fixed_batch_model_skips_other_batches(tmp_path):
    folder = export(ExportOptions(size="26m", imgsz=64, num_classes=10, batch=2, out=tmp_path)).artifact
    entry = measure_cell(CellRequest(str(folder), "onnx", batch=3, plan=QUICK))
    assert entry["status"] == "skipped" and entry["batch_specific"] and "fixed batch of 2" in entry["reason"]
    assert measure_cell(CellRequest(str(folder), "onnx", batch=2, plan=QUICK))["status"] == "ok"


def test_onnx_runtime_profile_maps_layers_to_stages(artifact, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's profiler writes to the working directory unless told otherwise
    entry = measure_cell(CellRequest(str(artifact.root), "onnx", batch=2, plan=QUICK, profile=True, top=7))
    profile = entry["profile"]
    assert profile["available"] and profile["metric"] == "time_ms" and profile["runs"] >= 10
    stages = {s["stage"]: s for s in profile["stages"]}
    assert STAGES <= set(stages)
    unmapped = stages.get("other", {"layers": 0})["layers"]
    assert unmapped <= 0.02 * profile["layers"], f"{unmapped} of {profile['layers']} layers not mapped to a stage"
    assert sum(s["share"] for s in profile["stages"]) == pytest.approx(1.0, abs=1e-3)
    assert len(profile["top_layers"]) == 7
    values = [layer["value"] for layer in profile["top_layers"]]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    assert profile["devices"] == {"CPUExecutionProvider": 1.0}
    assert list(tmp_path.iterdir()) == [], "the profiler left files in the working directory"


def test_onnx_runner_profile_removes_its_private_files(artifact):
    runner = OnnxRuntimeRunner(artifact.path("model.onnx"), threads=1, profile=True)
    with runner:
        folder = runner._profile_dir
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))
        records = runner.profile_layers()
        assert folder.is_dir()
    assert records and all(r.calls == 1 and r.time_ms >= 0 for r in records)
    named = [r for r in records if not r.name.startswith("/")]
    assert named and sum(r.scope is not None for r in named) >= len(named) // 2  # renamed nodes traced back
    assert not folder.exists()
    assert OnnxRuntimeRunner(artifact.path("model.onnx")).profile_layers() is None


# -- the command, with child processes -------------------------------------------------------------
def test_bench_result_validates_and_records_what_it_measured(runs, artifact):
    document = json.loads(runs[0].read_text())
    jsonschema.validate(document, SCHEMA)
    assert document["schema_version"] == 1 and document["device"] == "device A"
    cells = {(e["target"], e["batch"]): e for e in document["results"]}
    assert set(cells) == {("torch", 1), ("torch", 2), ("onnx", 1), ("onnx", 2)}
    for entry in cells.values():
        assert_latency_fields(entry)
        assert entry["memory"]["isolation"] == "process" and entry["options"] == {"threads": 1}
        assert entry["timing"]["runs"] == 5 and entry["timing"]["warmup"] == 1
    assert cells[("onnx", 1)]["label"] == "onnxruntime (CPUExecutionProvider)"
    skipped = {s["target"]: s for s in document["skipped"]}
    assert set(skipped) == {"onnx-fp16", "onnx-int8", "trt-fp16", "trt-int8", "coreml"}
    for target, skip in skipped.items():
        assert skip["batches"] == [1, 2] and skip["kind"] == "unavailable"
        assert TARGETS[target].file in skip["reason"]
    model = document["model"]
    assert (model["size"], model["imgsz"], model["num_classes"]) == ("26m", 64, 10)
    assert model["madds"] == artifact.manifest["model"]["madds"]
    assert model["files"]["model.onnx"]["sha256"] == artifact.manifest["files"]["model.onnx"]["sha256"]
    environment = document["environment"]
    assert environment["cpu"]["model"] and environment["cpu"]["logical_cores"] >= 1
    assert environment["libraries"]["onnxruntime"] and environment["threads"]["requested"] == 1
    assert document["settings"]["batches"] == [1, 2] and document["command"].startswith("mfdeploy bench")


def test_bench_prints_a_table_and_skips_with_reasons(cli, artifact):
    result = cli("bench", artifact.root, "--targets", "onnx,trt-int8", "--runs", "3", "--warmup", "0")
    assert result.code == 0, result.err
    assert re.search(r"│ onnx\s+│\s+1 │", result.out), result.out
    assert "skipped trt-int8 (batch 1)" in result.err and "model.int8.plan" in result.err
    assert "only 3 timed runs" in result.err  # the few-runs warning


def test_bench_json_to_stdout_and_exit_code_when_nothing_ran(cli, artifact):
    result = cli("bench", artifact.root, "--targets", "coreml", "--json", "-")
    assert result.code == 3  # nothing could be measured: not a crash, but not a success either
    document = json.loads(result.out)
    assert document["results"] == [] and document["skipped"][0]["target"] == "coreml"
    assert "Traceback" not in result.err


def test_bench_size_exports_to_a_temporary_folder(cli, tmp_path):
    out = tmp_path / "r.json"
    result = cli("bench", "--size", "26m", "--imgsz", "64", "--targets", "onnx", "--runs", "3", "--json", out)
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    assert document["model"]["temporary_artifact"] and document["model"]["size"] == "26m"
    assert not Path(document["model"]["artifact"]).exists()


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--targets", "onnx,tflite"], ["unknown target 'tflite'", "valid targets are torch, onnx"]),
        (["--batches", "0"], ["--batches: batch sizes must be positive, got 0"]),
        (["--batches", "1,x"], ["--batches takes positive integers", "'x'"]),
        (["--runs", "0"], ["--runs must be at least 1, got 0"]),
        (["--runs", "10", "--min-time", "2"], ["either --runs N or --min-time"]),
        (["--min-time", "0"], ["--min-time must be a positive"]),
        (["--warmup", "-1"], ["--warmup must be 0 or more"]),
        (["--threads", "0"], ["--threads must be at least 1"]),
        (["--compute-units", "GPU"], ["unknown --compute-units 'GPU'", "CPU_AND_NE"]),
        (["--provider", "rocm"], ["unknown provider 'rocm'"]),
        (["--imgsz", "64"], ["--imgsz applies to --size only"]),
        (["--size", "26m"], ["not both"]),
    ],
)
def test_bench_bad_input_is_one_line(cli, artifact, args, fragments):
    assert_one_line_error(cli("bench", artifact.root, *args), *fragments)


def test_bench_bad_folder_and_no_model(cli, artifact, tmp_path):
    assert_one_line_error(cli("bench", tmp_path / "nope"), "is not an artifact folder")
    assert_one_line_error(cli("bench", tmp_path), "has no manifest.json")
    assert_one_line_error(cli("bench"), "give an artifact folder or --size")
    assert_one_line_error(cli("bench", artifact.root, "--json", tmp_path), "is a folder; give a file name")


# -- reports ---------------------------------------------------------------------------------------
def assert_png_is_a_real_chart(data: bytes) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width >= 400 and image.height >= 250
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, "the image is (nearly) one flat colour"
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20, "too few colours for a chart with axes, text and series"
    non_white = (pixels < 250).any(axis=2).mean()
    assert 0.02 < non_white < 0.9, f"{non_white:.1%} of the pixels are drawn"


def test_report_merges_two_runs_into_markdown_html_and_charts(cli, runs, tmp_path):
    md, page = tmp_path / "out" / "report.md", tmp_path / "report.html"
    result = cli("report", *runs, "--md", md, "--html", page)
    assert result.code == 0, result.err
    pngs = sorted(md.parent.glob("*.png"))
    assert [p.name for p in pngs] == ["report-by-device.png", "report-latency-vs-batch.png"]
    for png in pngs:
        assert_png_is_a_real_chart(png.read_bytes())
    text = md.read_text()
    for png in pngs:
        assert f"]({png.name})" in text
    assert "| device A | 26m @64px | torch | torch | fp32 | 1 |" in text
    assert "| device B | 26m @64px | onnx | onnxruntime (CPUExecutionProvider) | fp32 | 4 |" in text
    assert "## Skipped" in text and "model.int8.onnx" in text and "## Environment" in text
    assert "### device B, 26m @64px, onnx, batch 4" in text  # the profile of the profiled run
    html = page.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == 2
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert html.count("<tr>") > 10 and "device A" in html and "device B" in html and "</html>" in html


def test_report_to_the_terminal_only(cli, runs):
    result = cli("report", *runs)
    assert result.code == 0, result.err
    assert "device A" in result.out and "device B" in result.out and "wrote" not in result.err


@pytest.mark.parametrize("case", ["version", "corrupt", "not-object", "manifest", "schema", "missing", "folder"])
def test_report_refuses_a_bad_file_naming_it(cli, runs, artifact, tmp_path, case):
    bad = tmp_path / f"bad-{case}.json"
    document = json.loads(runs[0].read_text())
    expected = {
        "version": "has schema_version 2; this mfdeploy reads schema_version 1",
        "corrupt": "is not valid JSON",
        "not-object": "is not an mfdeploy bench result",
        "manifest": "looks like an artifact manifest",
        "schema": "does not match the bench result schema",
        "missing": "no such result file",
        "folder": "is a folder",
    }[case]
    if case == "version":
        bad.write_text(json.dumps({**document, "schema_version": 2}))
    elif case == "corrupt":
        bad.write_text(runs[0].read_text()[:500])
    elif case == "not-object":
        bad.write_text("[1, 2]")
    elif case == "manifest":
        bad.write_text(artifact.path("manifest.json").read_text())
    elif case == "schema":
        del document["results"][0]["latency_ms"]["p99"]
        bad.write_text(json.dumps(document))
    elif case == "folder":
        bad.mkdir()
    result = cli("report", runs[0], bad, "--md", tmp_path / "r.md")
    assert_one_line_error(result, str(bad), expected)
    assert not (tmp_path / "r.md").exists()
