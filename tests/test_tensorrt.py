"""TensorRT: the CPU-side readiness lint on every size's graphs, the no-TensorRT behaviour, the engine
sidecar refusal, and (where TensorRT and a GPU exist) real engine builds checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mfdeploy.artifacts import Artifact
from mfdeploy.calibration.pipeline import CalibrationOptions, calibrate_artifact
from mfdeploy.errors import UserError
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.graph.tensorrt_lint import POLICY, RULES, TENSORRT, lint_graph, operator_table
from mfdeploy.runtime.base import TargetUnavailable
from mfdeploy.runtime.tensorrt_env import check_engine_compatible, tensorrt_unavailable_reason

NO_TENSORRT = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and an NVIDIA GPU: {NO_TENSORRT}")


def test_operator_table_names_its_version_and_source():
    table = operator_table()
    assert table["tensorrt_version"] and "onnx-tensorrt" in table["source"]
    assert {"Conv", "MatMul", "LayerNormalization", "QuantizeLinear"} <= set(table["supported"])
    assert "QLinearConv" in table["unsupported"]


@pytest.mark.slow
def test_lint_passes_on_every_size_fp32_fp16_int8(swept_size):
    artifact = Artifact.open(swept_size.export.artifact)
    report = swept_size.calibration  # calibrated on 8 images (tests/size_sweep.py)
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        # strict: the project's own graphs break no TensorRT rule and depart from no mfdeploy policy
        lint = lint_graph(onnx.load(str(artifact.path(name))), name, strict=True)
        assert lint.ok and not lint.findings, (artifact.size, name, lint.findings)
    # the INT8 graph on its FP16 base: every quantized op INT8, FP16 elsewhere, FP32 only where an island is
    census, islands = report["int8"]["census"], {i["node"] for i in report["fp16"]["fp32_islands"]}
    assert census["nodes"]["int8"] == report["int8"]["quantized_nodes"] and census["nodes"]["fp16"] > 0
    strays = [n for n in census["fp32_nodes"] if n["node"] not in islands and not n["group"].startswith("an INT8")]
    assert not strays, (artifact.size, strays[:3])
    # and it still computes what FP32 computes, on real photographs
    assert report["evaluation"]["graphs"]["int8"]["vs_fp32"]["cosine"] >= 0.99, artifact.size


def tiny_graph(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "broken", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_rejects_graphs_broken_on_purpose():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    # An operator TensorRT's parser does not have.
    det = tiny_graph([helper.make_node("Det", ["x"], ["y"], name="det")], [x], [y])
    assert any("Det det: not supported" in p for p in lint_graph(det).problems)
    # A custom-domain op.
    custom = tiny_graph([helper.make_node("Mystery", ["x"], ["y"], name="m", domain="com.example")], [x], [y])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    assert any("custom" in p for p in lint_graph(custom).problems)
    # A rank-5 tensor.
    shape5 = numpy_helper.from_array(np.array([1, 1, 1, 2, 2], np.int64), "shape5")
    shape2 = numpy_helper.from_array(np.array([1, 4], np.int64), "shape2")
    rank5 = tiny_graph(
        [
            helper.make_node("Reshape", ["x", "shape5"], ["t"], name="r5"),
            helper.make_node("Reshape", ["t", "shape2"], ["y"], name="r2"),
        ],
        [x],
        [y],
        [shape5, shape2],
    )
    # rank 5 is mfdeploy's policy (TensorRT allows 8): a warning, an error only when strict
    report = lint_graph(rank5)
    assert report.ok and any("rank 5" in w for w in report.warnings)
    assert [f.kind for f in report.findings if "rank 5" in f.message] == ["policy"]
    assert any("rank 5" in p for p in lint_graph(rank5, strict=True).problems)
    # Asymmetric quantization (zero point 3).
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(3, np.int8), "z")
    qdq = tiny_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
        ],
        [x],
        [y],
        [scale, zero],
    )
    assert any("zero point must be int8 0" in p for p in lint_graph(qdq).problems)
    # LayerNorm computed in FP16 without the user allowing it.
    x16 = helper.make_tensor_value_info("x16", TensorProto.FLOAT16, [1, 4])
    y16 = helper.make_tensor_value_info("y16", TensorProto.FLOAT16, [1, 4])
    gamma = numpy_helper.from_array(np.ones(4, np.float16), "g")
    beta = numpy_helper.from_array(np.zeros(4, np.float16), "b")
    ln16 = tiny_graph(
        [helper.make_node("LayerNormalization", ["x16", "g", "b"], ["y16"], name="ln")], [x16], [y16], [gamma, beta]
    )
    assert any("runs in FP16" in w for w in lint_graph(ln16).warnings) and lint_graph(ln16).ok
    assert any("runs in FP16" in p for p in lint_graph(ln16, strict=True).problems)
    assert lint_graph(ln16, allow_fp16_norms=True, strict=True).ok
    # Reduce axes that are not an initializer, and an opset TensorRT does not read.
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y1 = helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)
    reduce = tiny_graph([helper.make_node("ReduceMean", ["x", "axes"], ["y1"], name="rm")], [x, axes], [y1], opset=18)
    assert any("axes must be an initializer" in p for p in lint_graph(reduce).problems)
    old = tiny_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y], opset=8)
    assert any("opset 8 outside" in p for p in lint_graph(old).problems)


def test_check_command(cli, small_artifact):
    root = small_artifact
    result = cli("check", "--target", "trt", root, "--json")
    assert result.code == 0, result.err
    assert [r["graph"] for r in result.json()] == ["model.onnx"] and result.json()[0]["ok"]
    # Break the graph (a Det node) and re-record it: the lint names the node and exits non-zero.
    model = onnx.load(str(root / "model.onnx"))
    model.graph.node[0].op_type = "Det"
    onnx.save(model, str(root / "model.onnx"))
    artifact = Artifact.open(root)
    artifact.record_file("model.onnx")
    artifact.save()
    result = cli("check", "--target", "trt", root)
    assert result.code == 1 and "not supported by TensorRT" in result.out


@pytest.mark.skipif(NO_TENSORRT is None, reason="this host has TensorRT and a GPU: the no-TensorRT path cannot run")
def test_no_tensorrt_host_writes_verified_graphs_and_exits_3(cli, tmp_path):
    result = cli(
        "export",
        "--size",
        "26m",
        "--imgsz",
        "64",
        "--target",
        "trt",
        "--precision",
        "int8",
        "--calib-size",
        "16",
        "--out",
        tmp_path,
    )
    assert result.code == 3, result.err
    root = (tmp_path / "mobileformer_26m").resolve()
    notes = [line for line in result.err.splitlines() if "TensorRT engine not built" in line]
    assert len(notes) == 1 and "Traceback" not in result.err
    assert str(root / "model.int8.onnx") in notes[0]  # outside the current folder: absolute
    # the GPU-host command names the folder as it is copied, to run in the folder that holds it
    assert f"copy {root} there" in result.err
    assert "\n  mfdeploy build-engine mobileformer_26m --precision int8\n" in result.err
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["verification"]["onnx"]["passed"] and manifest["tensorrt"]["lint"]["ok"]
    assert manifest["tensorrt"]["engine"]["skipped"] == NO_TENSORRT
    assert not list(root.glob("*.plan"))
    # build-engine on the same host says the same thing, with the same exit code.
    again = cli("build-engine", root, "--precision", "int8")
    assert again.code == 3 and "passed the TensorRT" in again.err


def test_engine_sidecar_refuses_another_tensorrt_or_gpu():
    entry = {
        "file": "model.fp16.plan",
        "tensorrt_version": "10.8.0",
        "gpu_name": "NVIDIA A100",
        "compute_capability": "8.0",
    }
    command = "mfdeploy build-engine art --precision fp16"
    check_engine_compatible(entry, dict(entry), command)  # same host: accepted
    with pytest.raises(UserError, match=r"another TensorRT version.*rebuild it with `mfdeploy build-engine"):
        check_engine_compatible(entry, dict(entry, tensorrt_version="10.9.0"), command)
    with pytest.raises(UserError, match="another GPU"):
        check_engine_compatible(entry, dict(entry, gpu_name="NVIDIA H100", compute_capability="9.0"), command)


def test_bad_profiles_are_refused(cli, tmp_path):
    result = cli(
        "export", "--size", "26m", "--target", "trt", "--min-batch", "8", "--max-batch", "4", "--out", tmp_path / "o"
    )
    assert result.code == 1 and "min <= opt <= max" in result.err
    result = cli("export", "--size", "26m", "--target", "trt", "--precision", "int4", "--out", tmp_path / "o")
    assert result.code == 1 and "unknown TensorRT precision" in result.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "target, flags, message",
    [
        ("coreml", ["--method", "entropy"], "--method: TensorRT options, not used by --target coreml"),
        ("onnx", ["--workspace", "2", "--min-batch", "2"], "--min-batch/--opt-batch/--max-batch, --workspace"),
        ("onnx", ["--precision", "int8"], "--precision: TensorRT or Core ML options, not used by --target onnx"),
    ],
)
def test_trt_options_without_the_trt_target_are_refused(cli, tmp_path, target, flags, message):
    result = cli("export", "--size", "26m", "--target", target, *flags, "--out", tmp_path / "o")
    assert result.code == 1 and message in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_batch_outside_the_profile_is_refused_with_the_range_and_the_command():
    from mfdeploy.runtime.tensorrt_runner import profile_refusal

    command = "mfdeploy build-engine art --precision int8"
    assert profile_refusal((1, 8, 32), 32, "int8", command) is None
    assert profile_refusal(None, 999, "int8", command) is None  # a static engine: fixed_batch covers it
    high = profile_refusal((1, 8, 32), 64, "int8", command)
    assert high == (
        "the int8 engine's optimization profile covers batch 1..32 (opt 8), not 64; rebuild it with "
        "`mfdeploy build-engine art --precision int8 --min-batch 1 --opt-batch 8 --max-batch 64`"
    )
    low = profile_refusal((4, 8, 16), 2, "fp16", command)
    assert "covers batch 4..16" in low and "--min-batch 2 --opt-batch 8 --max-batch 16`" in low


def test_parity_skips_a_target_whose_profile_does_not_cover_the_batch():
    """run_targets (parity, eval, verification) asks the runner before running: the cell is skipped with the
    runner's one-line reason, as for a target that cannot run here."""
    from mfdeploy.benchmark.noop import NoopRunner
    from mfdeploy.runtime.comparison import run_targets
    from mfdeploy.runtime.tensorrt_runner import profile_refusal

    class Engine(NoopRunner):
        def batch_unsupported_reason(self, batch):
            return profile_refusal((1, 8, 8), batch, "fp16", "mfdeploy build-engine art --precision fp16")

    images = np.zeros((20, 3, 32, 32), np.float32)
    reference = np.zeros((20, 10), np.float32)
    [run] = run_targets(reference, [Engine(3, 32, 10)], images, 16)
    assert run.runner is None and "covers batch 1..8 (opt 8), not 16" in run.skipped
    [run] = run_targets(reference, [Engine(3, 32, 10)], images, 8)  # 8, 8 and a remainder of 4
    assert run.skipped is None and run.logits.shape == (20, 10)


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.combined: list[bytes] = []

    def serialize(self) -> bytes:
        return self.data + b"+built"

    def combine(self, other, ignore_mismatch):
        self.combined.append(other.data)
        return True


class FakeConfig:
    """IBuilderConfig's timing-cache calls as TensorRT documents them: set_timing_cache returns False for a
    cache it does not accept (ignore_mismatch=False), get_timing_cache may return None."""

    def __init__(self, accepts=lambda data: True, keeps=True) -> None:
        self.accepts, self.keeps, self.set = accepts, keeps, None

    def create_timing_cache(self, data):
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if not self.accepts(cache.data):
            return False
        self.set = cache
        return True

    def get_timing_cache(self):
        return self.set if self.keeps else None


def test_timing_cache_reused_only_when_tensorrt_accepts_it(tmp_path, capsys):
    from mfdeploy.export.tensorrt_build import TimingCacheUse

    path = tmp_path / "art" / "timing.cache"
    fresh = TimingCacheUse.open(FakeConfig(), path)  # no file yet
    assert not fresh.reused and fresh.rejected is None
    path.parent.mkdir()
    path.write_bytes(b"from-this-gpu")
    config = FakeConfig()
    use = TimingCacheUse.open(config, path)
    assert use.reused and use.rejected is None
    use.save(config)
    assert path.read_bytes() == b"from-this-gpu+built"
    assert use.recorded_path(tmp_path / "art") == "timing.cache"  # inside the artifact: relative
    assert TimingCacheUse(tmp_path / "elsewhere.cache").recorded_path(tmp_path / "art") == str(
        tmp_path / "elsewhere.cache"
    )
    # a cache from another GPU or TensorRT version: TensorRT says no; a fresh cache is used, never fatal
    path.write_bytes(b"from-another-gpu")
    config = FakeConfig(accepts=lambda data: data != b"from-another-gpu")
    rejected = TimingCacheUse.open(config, path)
    assert not rejected.reused and "rejected the timing cache" in rejected.rejected
    assert "rejected the timing cache" in capsys.readouterr().err
    assert config.set.data == b""  # the build runs with the fresh cache
    rejected.save(config)
    assert path.read_bytes() == b"+built"  # replaced by this host's cache
    # another build wrote the file meanwhile: its entries are combined in before saving
    config = FakeConfig()
    use = TimingCacheUse.open(config, path)
    path.write_bytes(b"written-meanwhile")
    use.save(config)
    assert config.set.combined == [b"written-meanwhile"]
    # get_timing_cache returning None: nothing written, a warning, no crash
    before = path.read_bytes()
    config = FakeConfig(keeps=False)
    use = TimingCacheUse.open(config, path)
    use.save(config)
    assert path.read_bytes() == before and "get_timing_cache returned None" in capsys.readouterr().err


def test_plan_and_engine_json_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    from mfdeploy.export import tensorrt_build

    plan, sidecar = tmp_path / "model.fp16.plan", tmp_path / "engine.json"
    tensorrt_build.write_together({plan: b"plan", sidecar: b"{}"})
    assert plan.read_bytes() == b"plan" and sidecar.read_bytes() == b"{}"
    real_replace = tensorrt_build.os.replace

    def fail_on_second(src, dst):
        if Path(dst).name == "engine.json":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(tensorrt_build.os, "replace", fail_on_second)
    (tmp_path / "new").mkdir()
    new_plan, new_sidecar = tmp_path / "new" / "model.fp16.plan", tmp_path / "new" / "engine.json"
    with pytest.raises(OSError):
        tensorrt_build.write_together({new_sidecar: b"{}", new_plan: b"plan"})  # engine.json first: it fails
    assert list((tmp_path / "new").iterdir()) == []  # neither file, no temporaries


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_build_run_and_match_pytorch(cli, tmp_path, precision):
    """Real engines: batch 1 static and a dynamic profile, parity per precision, timing cache, reload."""
    from mfdeploy.export.tensorrt_build import BatchProfile, EngineOptions, build_engine
    from mfdeploy.metrics import compare_logits
    from mfdeploy.runtime.registry import create_runner

    # random weights: below FP32 top-1 agreement is noise (flat logits), so FP16/INT8 are held to cosine.
    # FP32 engines are built with TF32 cleared (build_engine), so 1e-3 is an FP32-vs-FP32 tolerance; with TF32
    # on, Ampere+ GPUs round matmul inputs to 10 mantissa bits and would miss it.
    tolerances = {"fp32": (1e-3, 0.99999), "fp16": (5e-2, 0.999), "int8": (None, 0.99)}
    root = export(ExportOptions(size="52m", out=tmp_path)).artifact
    artifact = Artifact.open(root)
    if precision != "fp32":
        calibrate_artifact(artifact, CalibrationOptions(num_images=64, measure_latency=False, precisions=(precision,)))
    cache = tmp_path / "timing.cache"
    first = build_engine(artifact, EngineOptions(precision, BatchProfile(1, 8, 32), timing_cache=cache))
    assert first["tf32"] is (precision != "fp32")
    # "reused" is TensorRT's answer, not the file's existence: this host's own cache must be accepted...
    second = build_engine(artifact, EngineOptions(precision, BatchProfile(1, 8, 32), timing_cache=cache))
    assert not first["timing_cache_reused"] and second["timing_cache_reused"]
    assert "timing_cache_rejected" not in second
    # ...and a file that is not a timing cache is reported as rejected and replaced, the build going on
    cache.write_bytes(b"not a timing cache")
    third = build_engine(artifact, EngineOptions(precision, BatchProfile(1, 8, 32), timing_cache=cache))
    assert not third["timing_cache_reused"] and "rejected" in third["timing_cache_rejected"]
    assert cache.read_bytes() != b"not a timing cache"
    images = artifact.preprocessing.batch(__import__("mfdeploy.images.samples").sample_images.builtin_images(32))
    with create_runner("torch", artifact) as reference, create_runner(f"trt-{precision}", artifact) as engine:
        # the profile as the engine reports it (get_tensor_profile_shape), not as we asked for it
        assert engine.batch_range == (1, 8, 32)
        for batch in (1, 7, 32):
            figures = compare_logits(reference.infer(images[:batch]), engine.infer(images[:batch]))
            atol, min_cosine = tolerances[precision]
            assert figures["cosine"] >= min_cosine and figures["nan_count"] == 0
            assert precision != "fp32" or figures["top1_agreement"] == 1.0
            if atol is not None:
                assert figures["max_abs_error"] <= atol
        gpu = engine.pop_device_timings()["gpu_compute"]
        assert len(gpu) == 3 and min(gpu) > 0 and engine.pop_device_timings() == {}
        too_big = np.concatenate([images, images, images[:1]])  # 65 > 32
        assert "covers batch 1..32 (opt 8), not 65" in engine.batch_unsupported_reason(65)
        with pytest.raises(TargetUnavailable, match="--max-batch 65"):
            engine.infer(too_big)
    with create_runner(f"trt-{precision}", artifact, profile=True) as profiled:
        profiled.infer(images[:8])
        layers = profiled.profile_layers()
        assert layers and any("/blocks." in layer.name for layer in layers)
    static = build_engine(artifact, EngineOptions(precision, BatchProfile.static(1), timing_cache=cache))
    with create_runner(f"trt-{precision}", artifact) as engine:
        # the engine itself has a fixed batch of 1: read back from TensorRT, not from what was passed in
        assert engine.inputs()[0].fixed_batch == 1 and engine.batch_range is None
    assert static["profile"]["max"] == 1


@needs_tensorrt
@pytest.mark.gpu
@pytest.mark.trt
def test_cuda_graphs_replay_matches_plain_launches(tmp_path):
    """--cuda-graphs on a real engine: captured after one warm-up launch, replayed with the same logits."""
    from mfdeploy.export.tensorrt_build import BatchProfile, EngineOptions, build_engine
    from mfdeploy.runtime.registry import create_runner

    artifact = Artifact.open(export(ExportOptions(size="26m", imgsz=64, out=tmp_path)).artifact)
    build_engine(artifact, EngineOptions("fp32", BatchProfile(1, 4, 8)))
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with create_runner("trt-fp32", artifact) as plain, create_runner("trt-fp32", artifact, cuda_graphs=True) as graphs:
        expected = plain.infer(images)
        first, replayed = graphs.infer(images), graphs.infer(images)  # plain launch + capture, then replay
        state = graphs.cuda_graphs_state()
        assert state["requested"] and (state["used"] or state["fallback"]), state
        np.testing.assert_allclose(first, expected, atol=1e-5)
        np.testing.assert_allclose(replayed, expected, atol=1e-5)
        assert len(graphs.pop_device_timings()["gpu_compute"]) == 2


# --- TensorRT rules vs mfdeploy policies -------------------------------------------------------------


def test_every_rule_is_a_tensorrt_rule_or_a_policy_with_its_source():
    assert {kind for kind, _ in RULES.values()} == {TENSORRT, POLICY}
    assert all(source for _, source in RULES.values())
    # the rules TensorRT itself imposes, and the choices that are ours
    assert {"operator", "element-type", "max-rank", "qdq-zero-point", "qdq-activation-per-tensor"} <= {
        rule for rule, (kind, _) in RULES.items() if kind == TENSORRT
    }
    assert {"rank", "fp16-norm", "qdq-weight-per-channel"} <= {
        rule for rule, (kind, _) in RULES.items() if kind == POLICY
    }


def _activation_qdq(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The Q/DQ pair on the network input (a 4-D activation: N, 3, H, W), directly or after the Cast to FP16
    that an FP16-based graph puts on its FP32 input."""
    graph = model.graph
    network_input = {graph.input[0].name}
    network_input |= {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in network_input}
    quantize = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in network_input)
    dequantize = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0])
    return quantize, dequantize


def _scale_dtype(model: onnx.ModelProto, node: onnx.NodeProto) -> np.dtype:
    """The element type of ``node``'s scale, which a replacement scale must keep (DequantizeLinear's output
    type is its scale's)."""
    scale = next(i for i in model.graph.initializer if i.name == node.input[1])
    return numpy_helper.to_array(scale).dtype


def test_int8_graph_keeps_activations_per_tensor_and_check_separates_errors_from_warnings(cli, small_artifact):
    artifact = Artifact.open(small_artifact)
    calibrate_artifact(artifact, CalibrationOptions(num_images=8, batch=8, holdout=4, measure_latency=False))
    int8 = onnx.load(str(artifact.path("model.int8.onnx")))
    report = lint_graph(int8, "model.int8.onnx", strict=True)
    assert report.ok and report.findings == [], report.findings
    # every op the project's graphs use is one the vendored operators.md calls supported
    vendored = parse_operators_md(VENDORED_OPERATORS_MD.read_text())
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        ops = {node.op_type for node in onnx.load(str(artifact.path(name))).graph.node}
        assert all(vendored.get(op) is True for op in ops), (name, sorted(op for op in ops if not vendored.get(op)))

    # Broken on purpose: the input activation quantized per channel (3 scales and zero points, axis 1).
    quantize, dequantize = _activation_qdq(int8)
    scale_type = _scale_dtype(int8, quantize)  # FP16 on the default FP16 base: the replacements keep it
    int8.graph.initializer.extend(
        [
            numpy_helper.from_array(np.full(3, 0.02, scale_type), "per_channel_scale"),
            numpy_helper.from_array(np.zeros(3, np.int8), "per_channel_zero"),
        ]
    )
    for node in (quantize, dequantize):
        node.input[1], node.input[2] = "per_channel_scale", "per_channel_zero"
        node.attribute.append(helper.make_attribute("axis", 1))
    broken = lint_graph(int8, "model.int8.onnx")
    per_tensor = [f for f in broken.findings if f.rule == "qdq-activation-per-tensor"]
    assert len(per_tensor) == 2 and {f.kind for f in per_tensor} == {TENSORRT}
    assert not broken.ok and any("activations per tensor" in p for p in broken.problems)

    # A weight quantized per channel along its input-channel axis breaks TensorRT's rule too; one quantized
    # per tensor only mfdeploy's policy.
    fresh = onnx.load(str(artifact.path("model.int8.onnx")))
    initializers = {init.name: init for init in fresh.graph.initializer}
    conv_weight_dq = next(
        n
        for n in fresh.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in initializers
        and len(initializers[n.input[0]].dims) == 4
        and initializers[n.input[0]].dims[1] > 1
    )
    wrong_axis = onnx.ModelProto()
    wrong_axis.CopyFrom(fresh)
    node = next(n for n in wrong_axis.graph.node if n.name == conv_weight_dq.name)
    weight, scale_type = initializers[node.input[0]], _scale_dtype(fresh, conv_weight_dq)
    wrong_axis.graph.initializer.append(
        numpy_helper.from_array(np.full(weight.dims[1], 0.01, scale_type), "axis1_scale")
    )
    wrong_axis.graph.initializer.append(numpy_helper.from_array(np.zeros(weight.dims[1], np.int8), "axis1_zero"))
    node.input[1], node.input[2] = "axis1_scale", "axis1_zero"
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("axis", 1))
    assert [f.rule for f in lint_graph(wrong_axis).findings if f.kind == TENSORRT] == ["qdq-weight-axis"]

    node = next(n for n in fresh.graph.node if n.name == conv_weight_dq.name)
    fresh.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.01, scale_type), "tensor_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "tensor_zero"),
        ]
    )
    node.input[1], node.input[2] = "tensor_scale", "tensor_zero"
    per_tensor_weight = lint_graph(fresh)
    assert per_tensor_weight.ok and [f.rule for f in per_tensor_weight.findings] == ["qdq-weight-per-channel"]

    # check: a policy is a warning (exit 0) unless --strict; the kind is in the JSON and the human output.
    onnx.save(fresh, str(artifact.path("model.int8.onnx")))
    artifact.record_file("model.int8.onnx")
    artifact.save()
    result = cli("check", "--target", "trt", small_artifact, "--json")
    assert result.code == 0, result.out
    int8_report = next(r for r in result.json() if r["graph"] == "model.int8.onnx")
    assert int8_report["ok"] and int8_report["problems"] == [] and len(int8_report["warnings"]) == 1
    assert int8_report["findings"][0]["kind"] == "policy" and int8_report["findings"][0]["severity"] == "warning"
    result = cli("check", "--target", "trt", small_artifact)
    assert result.code == 0 and "warning (mfdeploy policy)" in result.out and "1 policy warning" in result.out
    result = cli("check", "--target", "trt", small_artifact, "--strict")
    assert result.code == 1 and "error (mfdeploy policy, --strict)" in result.out

    onnx.save(int8, str(artifact.path("model.int8.onnx")))
    artifact.record_file("model.int8.onnx")
    artifact.save()
    result = cli("check", "--target", "trt", small_artifact)
    assert result.code == 1 and "error (TensorRT rule)" in result.out and "activations per tensor" in result.out


# --- the operator table against onnx-tensorrt's docs/operators.md -------------------------------------

VENDORED_OPERATORS_MD = Path(__file__).parent / "data" / "onnx_tensorrt" / "operators.md"
VENDORED_COMMIT = "96e781103cfc4adf4a6bb557e94bac8e693f6f4c"
# Ops our table (TensorRT 10.15) supports that the vendored operators.md (the 10.1 GA tag, the newest copy
# at hand) marks unsupported or does not list: support onnx-tensorrt added after 10.1. Pinned exactly, so
# any other disagreement fails.
NEWER_THAN_VENDORED = {
    "Attention",
    "BlackmanWindow",
    "HammingWindow",
    "HannWindow",
    "RMSNormalization",
    "RotaryEmbedding",
    "STFT",
    "TensorScatter",
}


def parse_operators_md(text: str) -> dict[str, bool]:
    """operators.md's support matrix: operator -> supported (Y) or not (N)."""
    verdicts: dict[str, bool] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("| Operator"):
            in_table = True
            continue
        if not in_table or not line.startswith("|") or line.startswith("|--"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert cells[1] in ("Y", "N"), line
        verdicts[cells[0]] = cells[1] == "Y"
    return verdicts


def table_disagreements(table: dict, verdicts: dict[str, bool]) -> set[str]:
    """The ops our JSON table lists whose supported/unsupported verdict differs from operators.md."""
    ours = {op: True for op in table["supported"]} | {op: False for op in table["unsupported"]}
    return {op for op, supported in ours.items() if verdicts.get(op, False) != supported}


def test_operator_table_agrees_with_vendored_operators_md():
    text = VENDORED_OPERATORS_MD.read_text()
    assert VENDORED_COMMIT in text and "Apache-2.0" in text
    assert (VENDORED_OPERATORS_MD.parent / "LICENSE").read_text().lstrip().startswith("Apache License")
    verdicts = parse_operators_md(text)
    assert len(verdicts) > 150 and verdicts["Conv"] and not verdicts["QLinearConv"]
    table = operator_table()
    assert table_disagreements(table, verdicts) == NEWER_THAN_VENDORED
    # every op we list is in operators.md, except ops added after the vendored version
    assert (set(table["supported"]) | set(table["unsupported"])) - set(verdicts) <= NEWER_THAN_VENDORED


def test_operator_table_comparison_catches_a_changed_table():
    verdicts = parse_operators_md(VENDORED_OPERATORS_MD.read_text())
    table = json.loads(json.dumps(operator_table()))
    # an op TensorRT supports, marked unsupported
    del table["supported"]["Conv"]
    table["unsupported"].append("Conv")
    assert table_disagreements(table, verdicts) == NEWER_THAN_VENDORED | {"Conv"}
    # an op TensorRT does not support, marked supported
    table = json.loads(json.dumps(operator_table()))
    table["unsupported"].remove("QLinearConv")
    table["supported"]["QLinearConv"] = ["INT8"]
    assert table_disagreements(table, verdicts) == NEWER_THAN_VENDORED | {"QLinearConv"}
