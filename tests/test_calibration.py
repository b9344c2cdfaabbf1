"""INT8 (Q/DQ) and FP16 graphs for TensorRT, proven with ONNX Runtime on the CPU, on a model trained
on real labelled data (scikit-learn's digits) and on real photographs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from mfdeploy.artifacts import Artifact, calibrate_command
from mfdeploy.calibration import pipeline as calibration_pipeline
from mfdeploy.calibration.options import CalibrationOptions
from mfdeploy.calibration.ranges import entropy_threshold
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.graph.tensorrt_lint import check_tensorrt_qdq
from mfdeploy.model import build_model
from mfdeploy.model.weights import save_checkpoint


@pytest.fixture
def digits_copy(digits, tmp_path):
    """A private copy of the shared digits artifact that a test may calibrate: the session's artifact
    stays as conftest exported it, so no test depends on another having run (or on their order)."""
    root = tmp_path / digits["root"].name
    shutil.copytree(digits["root"], root)
    return root


@pytest.fixture(scope="module")
def calibrated_digits(digits, tmp_path_factory):
    """A copy of the digits artifact calibrated here (INT8 and FP16, on its training split) for the tests
    that only read the graphs."""
    root = tmp_path_factory.mktemp("calibrated-digits") / digits["root"].name
    shutil.copytree(digits["root"], root)
    options = CalibrationOptions(data=str(digits["train"]), measure_latency=False)
    assert options.precisions == ("int8", "fp16")
    calibration_pipeline.calibrate_artifact(Artifact.open(root), options)
    return root


def accuracy(path, images, labels):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"images": images})[0].argmax(1) == labels).mean())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_and_fp16_accuracy_on_real_labelled_data(cli, digits, digits_copy, method):
    """INT8 within 1 point of FP32 and FP16 within 0.2 points, on the digits validation split."""
    result = cli(
        "calibrate",
        digits_copy,
        "--calib-data",
        digits["train"],
        "--method",
        method,
        "--calib-size",
        "512",
        "--no-latency",
        "--json",
    )
    assert result.code == 0, result.err
    report = result.json()
    assert report["method"] == method and report["data"]["images"] == 512
    fp32 = accuracy(digits_copy / "model.onnx", digits["val"], digits["labels"])
    int8 = accuracy(digits_copy / "model.int8.onnx", digits["val"], digits["labels"])
    fp16 = accuracy(digits_copy / "model.fp16.onnx", digits["val"], digits["labels"])
    assert fp32 >= 0.9
    assert fp32 - int8 <= 0.01, (method, fp32, int8)
    assert abs(fp32 - fp16) <= 0.002, (method, fp32, fp16)


def test_int8_graph_follows_tensorrt_rules(cli, digits, digits_copy):
    assert not (digits_copy / "model.int8.onnx").exists()  # written by this run, not left by another test
    result = cli("calibrate", digits_copy, "--calib-data", digits["train"], "--precision", "int8", "--no-latency")
    assert result.code == 0, result.err
    model = onnx.load(str(digits_copy / "model.int8.onnx"))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 50
    # Every zero point is int8 0: symmetric quantization.
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    # Every Conv is quantized: activation and weight come through DequantizeLinear; weights per channel.
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        act, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert act.op_type == "DequantizeLinear" and producer[act.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear" and weight.input[0] in inits
        scale = inits[weight.input[1]]
        assert scale.shape == (inits[weight.input[0]].shape[0],), "per-output-channel weight scales"
        assert inits[weight.input[0]].dtype == np.int8
    # LayerNorm and Softmax outputs stay float: nothing quantizes them, even through reshapes/transposes.
    users = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def quantized_downstream(name, depth=0):
        for user in users.get(name, []):
            if user.op_type == "QuantizeLinear":
                return True
            if user.op_type in ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze") and depth < 8:
                if quantized_downstream(user.output[0], depth + 1):
                    return True
        return False

    norms = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert norms
    assert not any(quantized_downstream(n.output[0]) for n in norms)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert check_tensorrt_qdq(model) == []


def test_tensorrt_rule_check_catches_broken_graphs(calibrated_digits):
    model = onnx.load(str(calibrated_digits / "model.int8.onnx"))
    assert check_tensorrt_qdq(model) == []  # the graph passes before it is broken
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"))
    zero = next(i for i in model.graph.initializer if i.name == dq.input[2])
    zero.CopyFrom(numpy_helper.from_array(np.ones(numpy_helper.to_array(zero).shape, np.int8), zero.name))
    problems = check_tensorrt_qdq(model)
    assert any("zero point must be int8 0" in p for p in problems)


def test_onnxruntime_runs_both_graphs_at_batch_1_and_8(calibrated_digits, digits):
    for name in ("model.int8.onnx", "model.fp16.onnx"):
        session = ort.InferenceSession(str(calibrated_digits / name), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
        for batch in (1, 8):
            logits = session.run(None, {"images": digits["val"][:batch]})[0]
            assert logits.shape == (batch, 10) and np.isfinite(logits).all()


NOT_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Reshape", "Transpose", "Flatten"}
NOT_COMPUTE |= {"Squeeze", "Unsqueeze", "Identity", "Shape", "Gather", "Concat", "Slice", "Split"}


def test_int8_graph_runs_on_an_fp16_base_and_the_census_says_so(calibrated_digits):
    """The default INT8 graph: Q/DQ with FP16 scales (opset 19), every other compute node FP16 except the FP32
    islands, every quantized Conv/MatMul/Gemm reading its DequantizeLinear directly (no Cast between, so
    TensorRT fuses the pair), and a census in the report that counts exactly that."""
    report = json.loads((calibrated_digits / "calibration.json").read_text())
    int8 = report["int8"]
    census = int8["census"]
    model = onnx.load(str(calibrated_digits / "model.int8.onnx"))
    assert int8["base"] == "fp16"
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    producer = {o: n for n in model.graph.node for o in n.output}
    islands = {i["node"] for i in report["fp16"]["fp32_islands"]}
    small_scale = {n["node"] for n in census["fp32_nodes"] if n["group"].startswith("an INT8 scale")}
    fp32, fp16, int8_nodes = set(), set(), set()
    for node in model.graph.node:
        if node.op_type in NOT_COMPUTE:
            continue
        if node.op_type in ("Conv", "MatMul", "Gemm") and all(
            producer.get(name) is not None and producer[name].op_type == "DequantizeLinear" for name in node.input[:2]
        ):
            int8_nodes.add(node.name)
        elif elem.get(node.output[0]) == onnx.TensorProto.FLOAT16:
            fp16.add(node.name)
        elif elem.get(node.output[0]) == onnx.TensorProto.FLOAT:
            fp32.add(node.name)
    assert fp32 <= islands | small_scale, sorted(fp32 - islands - small_scale)[:5]
    assert len(fp16) > len(fp32) > 0
    assert census["nodes"] == {"int8": len(int8_nodes), "fp16": len(fp16), "fp32": len(fp32)}
    assert census["nodes"]["int8"] == int8["quantized_nodes"]  # none lost to a Cast between DQ and its op
    assert {n["node"] for n in census["fp32_nodes"]} == fp32
    assert all(n["reason"] != calibration_pipeline.LEFT_FP32 for n in census["fp32_nodes"])
    assert abs(sum(census["madds_share"].values()) - 1) < 1e-9 and census["madds_share"]["int8"] > 0.25
    # activation scales are FP16 outside the islands
    scales = {i.name: i.data_type for i in model.graph.initializer}
    dq_types = {scales[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert onnx.TensorProto.FLOAT16 in dq_types
    markdown = (calibrated_digits / "calibration.md").read_text()
    assert "## Precision census" in markdown and f"| {census['compute_nodes']} |" in markdown


def test_residual_adds_get_their_skip_input_quantized(calibrated_digits):
    """TensorRT's residual placement: an Add of a quantized Conv's output and a skip branch has a Q/DQ pair
    on the skip branch and none on the Conv's output, so the Add fuses into the INT8 convolution."""
    residuals = json.loads((calibrated_digits / "calibration.json").read_text())["int8"]["residual_adds"]
    assert residuals  # the official family's blocks add a shortcut to their last conv
    model = onnx.load(str(calibrated_digits / "model.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    adds = {n.name: n for n in model.graph.node}
    for name in residuals:
        kinds = sorted(producer[i].op_type for i in adds[name].input)
        assert kinds == ["Conv", "DequantizeLinear"], (name, kinds)


def test_int8_base_fp32_keeps_the_float_graph_around_the_pairs(cli, small_artifact):
    result = cli(
        "calibrate", small_artifact, "--precision", "int8", "--int8-base", "fp32", "--calib-size", "16", "--no-latency"
    )
    assert result.code == 0, result.err
    assert "precision census on an FP32 base: compute nodes INT8" in result.out
    report = json.loads((small_artifact / "calibration.json").read_text())
    census = report["int8"]["census"]
    assert report["int8"]["base"] == "fp32" and census["nodes"]["fp16"] == 0 and census["nodes"]["fp32"] > 0
    assert [r["reason"] for r in census["fp32_reasons"]] == [calibration_pipeline.FP32_BASE]
    model = onnx.load(str(small_artifact / "model.int8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert check_tensorrt_qdq(model) == []
    artifact = Artifact.open(small_artifact)
    assert artifact.manifest["calibration"]["int8"]["base"] == "fp32"
    assert "--int8-base fp32" in calibrate_command(artifact, "model.int8.onnx")


def test_statistics_cache_reuse_and_invalidation(cli, small_artifact, monkeypatch):
    root, out = small_artifact, small_artifact.parent
    # INT8 only: the statistics (FP32 activations) are what is cached; an FP16 graph would only add time
    args = ("calibrate", root, *"--calib-size 24 --calib-batch 8 --precision int8 --no-latency --json".split())
    first = cli(*args, "--method", "minmax")
    assert first.code == 0, first.err
    assert not first.json()["stats"]["reused"]

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the model was run again although cached statistics exist")

    with monkeypatch.context() as patched:
        patched.setattr(calibration_pipeline, "collect_stats", must_not_run)
        for method in ("entropy", "percentile"):
            again = cli(*args, "--method", method)
            assert again.code == 0, again.err
            assert again.json()["stats"]["reused"] and again.json()["stats"]["key"] == first.json()["stats"]["key"]

    # Other data: new statistics, never the cached ones.
    other = cli(*args, "--calib-size", "16")
    assert other.code == 0 and not other.json()["stats"]["reused"]
    assert other.json()["stats"]["key"] != first.json()["stats"]["key"]

    # A changed model (same name, new weights, manifest updated): new statistics.
    shutil.rmtree(root)
    root = export(ExportOptions(size="26m", imgsz=64, num_classes=10, seed=7, out=out)).artifact
    changed = cli(*args)
    assert changed.code == 0 and not changed.json()["stats"]["reused"]
    assert changed.json()["stats"]["key"] != first.json()["stats"]["key"]


def test_fp32_islands_come_from_the_statistics(cli, tmp_path):
    """A model whose block-2 conv output is large: that node stays FP32, named with the measured value."""
    model = build_model("26m", num_classes=10, seed=3)
    with torch.no_grad():
        model.blocks[2].mobile.pw2.bn.weight.mul_(2000.0)
    ckpt = save_checkpoint(model, tmp_path / "loud.safetensors")
    root = export(ExportOptions(weights=str(ckpt), imgsz=64, out=tmp_path / "art")).artifact
    result = cli("calibrate", root, "--calib-size", "16", "--precision", "fp16", "--no-latency", "--json")
    assert result.code == 0, result.err
    islands = result.json()["fp16"]["fp32_islands"]
    measured = [i for i in islands if "output reaches |x|" in i["reason"]]
    assert any(i["node"].startswith("/blocks.2/mobile/pw2") for i in measured), islands
    assert {"LayerNormalization", "Softmax"} <= {i["op_type"] for i in islands}
    # random-init weights: top-1 agreement would be noise (flat logits), cosine is what the islands keep
    agreement = result.json()["evaluation"]["graphs"]["fp16"]["vs_fp32"]
    assert agreement["cosine"] >= 0.999 and agreement["nan_count"] == agreement["inf_count"] == 0
    markdown = (root / "calibration.md").read_text()
    # escaped in the table: a bare | would end the reason's cell
    assert "output reaches \\|x\\|" in markdown and "FP32 islands" in markdown


def test_entropy_search_matches_a_literal_implementation():
    """Our vectorised KL search picks exactly the threshold a literal per-candidate loop picks."""
    from collections import Counter

    def literal(hist, edges, levels=128, start=128):
        bins = hist.astype(np.float64).copy()
        bins[0] = bins[1]
        scores = []
        for i in range(start, len(bins) + 1):
            space = np.linspace(0, i, levels + 1)
            digitized = np.digitize(range(i), space) - 1
            digitized[bins[:i] == 0] = -1
            density = np.zeros(levels)
            for idx, d in enumerate(digitized):
                if d != -1:
                    density[d] += bins[idx]
            for key, value in Counter(digitized).items():
                if key != -1:
                    density[key] /= value
            candidate = np.array([density[d] if d != -1 else 0.0 for d in digitized])
            reference = bins[:i].copy()
            reference[-1] += bins[i:].sum()
            reference, candidate = reference / reference.sum(), candidate / candidate.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                scores.append(np.sum(np.where(reference > 0, reference * np.log(reference / candidate), 0.0)))
        scores = np.array(scores)
        return edges[len(scores) - 1 - int(np.argmin(scores[::-1])) + start]

    rng = np.random.default_rng(0)
    for values in (np.abs(rng.laplace(size=200_000)), np.maximum(rng.normal(1, 2, 200_000), 0)):
        hist, edges = np.histogram(values, bins=400, range=(0, values.max()))
        assert entropy_threshold(hist, edges) == pytest.approx(literal(hist, edges))


def make_image_folder(root, count=12):
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P", "CMYK"]
    for i in range(count):
        pixels = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(modes[i % len(modes)])
        folder = root / ("nested" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = {"RGB": "jpg", "L": "png", "RGBA": "png", "P": "bmp", "CMYK": "jpg"}[image.mode]
        if i % 5 == 4:
            suffix = "webp"
            image = image.convert("RGB")
        image.save(folder / f"img{i}.{suffix}")


def test_folder_calibration_data_with_every_format_and_a_corrupt_file(cli, tmp_path, small_artifact):
    root = small_artifact
    make_image_folder(tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = cli(
        "calibrate", root, "--calib-data", tmp_path / "photos", "--calib-size", "100", "--no-latency", "--json"
    )
    assert result.code == 0, result.err
    assert "skipped 1 unreadable" in result.err and "more than the 13 images" in result.err
    data = result.json()["data"]
    assert data["images"] == 12 and data["skipped_files"] == 1 and len(data["sha256"]) == 64


@pytest.mark.parametrize(
    "case,fragment",
    [
        ("empty", "has no images"),
        ("corrupt-only", "only 0 readable image(s)"),
        ("wrong-shape", "arrays must be preprocessed"),
        ("wrong-dtype", "must be float32"),
        ("percentile", "--percentile must be in (0, 100]"),
        ("method", "unknown calibration method 'kl'"),
        ("int8-base", "unknown --int8-base 'bf16'"),
        ("missing", "does not exist"),
    ],
)
def test_bad_calibration_input(cli, tmp_path, case, fragment, request):
    root = tmp_path / "art" / "mobileformer_26m"
    if case in ("empty", "corrupt-only", "wrong-shape", "wrong-dtype"):
        root = request.getfixturevalue("small_artifact")
    data = tmp_path / "data"
    extra: list[str] = []
    if case == "empty":
        data.mkdir()
    elif case == "corrupt-only":
        data.mkdir()
        for i in range(3):
            (data / f"{i}.png").write_bytes(b"garbage")
    elif case == "wrong-shape":
        data = tmp_path / "x.npy"
        np.save(data, np.zeros((10, 3, 32, 32), np.float32))
    elif case == "wrong-dtype":
        data = tmp_path / "x.npy"
        np.save(data, np.zeros((10, 3, 64, 64), np.float64))
    elif case == "percentile":
        data, extra = "builtin", ["--method", "percentile", "--percentile", "100.5"]
    elif case == "method":
        data, extra = "builtin", ["--method", "kl"]
    elif case == "int8-base":
        data, extra = "builtin", ["--int8-base", "bf16"]
    else:
        data = tmp_path / "nowhere"
    result = cli("calibrate", root, "--calib-data", data, *extra)
    assert result.code != 0 and "Traceback" not in result.err
    assert fragment in result.err
    if root.exists():
        assert not (root / "model.int8.onnx").exists() and not (root / "model.fp16.onnx").exists()


def test_npz_and_builtin_sources(cli, tmp_path, small_artifact):
    root = small_artifact
    images = np.random.default_rng(0).standard_normal((12, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", images=images)
    result = cli("calibrate", root, "--calib-data", tmp_path / "calib.npz", "--no-latency", "--json")
    assert result.code == 0, result.err
    assert result.json()["data"]["images"] == 12
    result = cli("calibrate", root, "--calib-size", "40", "--precision", "int8", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["data"]["source"] == "builtin" and report["data"]["images"] == 40
    latency = report["evaluation"]["ort_cpu_latency_ms"]
    # the FP16 graph of the first run stays valid beside the new INT8 graph: it is evaluated (and timed) again
    assert set(latency) == {"fp32", "int8", "fp16"} and all(v > 0 for row in latency.values() for v in row.values())
    assert report["fp16"]["kept"] and not report.get("int8", {}).get("kept")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "minmax" and "model.int8.onnx" in manifest["files"]


def test_export_target_trt_writes_the_precision_graph(cli, tmp_path):
    """`export --target trt --method all` works as `calibrate --method all` does: the three methods compared,
    the best by --select installed as the graph the engine is built from."""
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
        "--method",
        "all",
        "--select",
        "top5",
        "--calib-size",
        "16",
        "--out",
        tmp_path,
        "--json",
    )
    assert result.code in (0, 3), result.err
    root = tmp_path / "mobileformer_26m"
    assert (root / "model.int8.onnx").exists() and (root / "calibration.json").exists()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["tensorrt"]["precision"] == "int8" and manifest["calibration"]["graphs"] == {
        "int8": "model.int8.onnx"
    }
    assert check_tensorrt_qdq(onnx.load(str(root / "model.int8.onnx"))) == []
    chosen = manifest["calibration"]["method"]
    assert (
        manifest["calibration"]["selected_by"]["metric"] == "top5"
        and manifest["calibration"]["run"]["select"] == "top5"
    )
    installed = (root / "model.int8.onnx").read_bytes()
    assert installed == (root / "calibration" / chosen / "model.int8.onnx").read_bytes()
    report = json.loads((root / "calibration.json").read_text())
    top5 = {m: e["vs_fp32"]["top5_agreement"] for m, e in report["methods"].items()}
    assert set(top5) == {"minmax", "entropy", "percentile"} and top5[chosen] == max(top5.values())
    assert "untrained model is noise" in report["selection"]["note"]


def test_per_channel_weights_are_quantized_as_onnx_runtime_does():
    """The all-channels-at-once scales and int8 weights equal ONNX Runtime's own per-channel computation,
    bit for bit, including the edge cases: an all-zero channel, one-signed channels, subnormal and huge
    weights, values halfway between two integers and beyond the int8 range."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_onnx_initializer

    from mfdeploy.calibration.int8 import _quantize_initializer, per_channel_weight_scales

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    weight[1] = 0.0
    weight[2] = np.abs(weight[2]) + 0.5
    weight[3] = -np.abs(weight[3])
    weight[4] *= np.float32(1e-40)  # subnormal: a scale below float32's smallest normal becomes 1.0
    weight[5] *= np.float32(3e38) / np.abs(weight[5]).max()  # near float32's largest
    for axis in (0, 1, 3):
        ours = per_channel_weight_scales(weight, axis)
        theirs = [
            compute_data_quant_params(weight.take(i, axis).ravel(), TensorProto.INT8, True)[1]
            for i in range(weight.shape[axis])
        ]
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, np.asarray(theirs))
        # the weights, with those scales, and with scales that put eighths at .5 and past +-127
        eighths = np.round(rng.standard_normal(weight.shape) * 160).astype(np.float32) / 8
        halves = np.full(weight.shape[axis], 0.25, np.float32)
        zero = np.zeros(weight.shape[axis], np.int8)
        for values, scales in ((weight, ours), (eighths, halves), (eighths, halves / 8)):
            proto = numpy_helper.from_array(values, "w")
            expected = quantize_onnx_initializer(proto, TensorProto.INT8, zero, scales, axis)
            got = _quantize_initializer(None, proto, TensorProto.INT8, zero, scales, axis)
            assert got.SerializeToString() == expected.SerializeToString()


@pytest.mark.parametrize("which", ["small_export", "digits"])
def test_int8_graph_is_byte_identical_to_onnx_runtimes_own_quantizer(which, request, monkeypatch):
    """The quantizer with the vectorized scales writes the graph ONNX Runtime's QDQQuantizer writes alone
    (seed family: grouped projections; official family: per-column MatMul weights)."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from mfdeploy.calibration import int8
    from mfdeploy.calibration.ranges import TensorRange

    fixture = request.getfixturevalue(which)
    root = fixture if which == "small_export" else fixture["root"]
    prepared = calibration_pipeline._prepared_graph(root / "model.onnx")
    plan = int8.plan_quantization(prepared)
    ranges = {name: TensorRange(name, 0.5 + i % 7, 8.0, 0.0) for i, name in enumerate(plan.activations)}
    ours = int8.quantize(prepared, plan, ranges)
    monkeypatch.setattr(int8, "_quantizer_class", lambda ort_quantizer: QDQQuantizer)
    theirs = int8.quantize(prepared, plan, ranges)
    assert sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1 for i in ours.graph.initializer) > 20
    assert ours.SerializeToString() == theirs.SerializeToString()
