"""`mfdeploy export --target onnx`: custom-op-free graphs for every size, verified on every run,
with a manifest that says what was exported and hashes that prove it."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import DIGITS_IMGSZ, run_subprocess
from mfdeploy.artifacts import Artifact
from mfdeploy.export import onnx_export
from mfdeploy.export.pipeline import ExportOptions, export
from mfdeploy.export.verify import verify_runner
from mfdeploy.fileio import sha256_file
from mfdeploy.graph.checks import check_graph
from mfdeploy.model import build_model
from mfdeploy.model.families import get_family_config
from mfdeploy.model.weights import save_checkpoint
from mfdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner, optimized_graph
from mfdeploy.runtime.torch_runner import TorchRunner


@pytest.fixture(scope="session")
def artifact_52m(tmp_path_factory):
    """52m, random weights, dynamic batch, exported by the real CLI in its own process."""
    out = tmp_path_factory.mktemp("export52m")
    result = run_subprocess("export", "--size", "52m", "--target", "onnx", "--out", out)
    assert result.code == 0, result.err
    return out / "mobileformer_52m"


def assert_deployable(path):
    """The custom-op-free rules, checked on the file itself (independently of the export's own check)."""
    model = onnx.load(str(path))
    assert [o.domain for o in model.opset_import] in ([""], ["ai.onnx"])
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert not {"Loop", "If", "Scan"} & {node.op_type for node in model.graph.node}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    ranks = [len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info]
    assert ranks and max(ranks) <= 4
    assert all(node.name.startswith("/") for node in model.graph.node), "every node keeps its module path"
    report = check_graph(model)
    assert report.ok, report.violations
    return model


@pytest.mark.slow
def test_every_size_exports_and_verifies_with_dynamic_batch(exported_size):
    result = exported_size
    size = result.manifest["model"]["size"]
    model = assert_deployable(result.artifact / "model.onnx")
    assert model.opset_import[0].version == 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    verification = result.manifest["verification"]["onnx"]
    assert verification["passed"]
    assert {c["batch"] for c in verification["cases"]} == {1, 7, 32}
    assert {c["inputs"] for c in verification["cases"]} == {"images", "random"}
    assert all(c["max_abs_error"] <= 1e-4 and c["top1_agreement"] == 1.0 for c in verification["cases"])
    # LayerNorm is one LayerNormalization node (opset 17), the form TensorRT maps to its norm layer,
    # never a ReduceMean/Sub/Pow/Sqrt decomposition.
    histogram = result.manifest["onnx"]["op_histogram"]
    blocks = get_family_config(result.manifest["model"]["family"], size).blocks
    assert histogram["LayerNormalization"] >= 3 * len(blocks)
    assert not {"ReduceMean", "Pow", "Sqrt"} & set(histogram)


@pytest.mark.parametrize("imgsz", [160, 256])
def test_52m_static_batch_at_other_sizes(tmp_path, imgsz):
    result = export(ExportOptions(size="52m", imgsz=imgsz, batch=3, out=tmp_path))
    model = assert_deployable(result.artifact / "model.onnx")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, imgsz, imgsz]
    assert result.manifest["inputs"][0]["shape"] == [3, 3, imgsz, imgsz]
    assert [c["batch"] for c in result.manifest["verification"]["onnx"]["cases"]] == [3, 3]


@pytest.mark.parametrize("arch", ["seed", "official"])
def test_pinned_reshapes_leave_no_shape_arithmetic_for_the_simplifier(arch):
    """The dead Shape/Slice/Concat chains go before onnxslim sees the graph; it makes the same graph of it."""
    from mfdeploy.model.families import build_family_model

    graph = onnx_export.torch_to_onnx(build_family_model(arch, "26m", num_classes=10), 64, None, 17)
    exported = onnx.ModelProto()
    exported.CopyFrom(graph)
    pinned, count = onnx_export.pin_reshape_shapes(graph)
    assert count > 0
    ops = [node.op_type for node in pinned.graph.node]
    assert "Shape" in [node.op_type for node in exported.graph.node] and "Shape" not in ops
    assert len(ops) < 0.7 * len(exported.graph.node)
    # the same pinning without the pruning: every reshape target replaced, nothing removed
    unpruned = onnx.ModelProto()
    unpruned.CopyFrom(exported)
    targets = {node.name: node.input[1] for node in pinned.graph.node if node.op_type == "Reshape"}
    for node in unpruned.graph.node:
        if targets.get(node.name, "").endswith("/pinned_shape"):
            node.input[1] = targets[node.name]
    unpruned.graph.initializer.extend(i for i in pinned.graph.initializer if i.name.endswith("/pinned_shape"))
    assert len(unpruned.graph.node) == len(exported.graph.node)
    simplified = onnx_export.simplify(pinned, "onnxslim").SerializeToString()
    assert simplified == onnx_export.simplify(unpruned, "onnxslim").SerializeToString()


@pytest.mark.parametrize("arch", ["seed", "official"])
def test_every_recorded_shape_names_the_batch_and_is_what_the_graph_computes(arch, tmp_path):
    """After the simplifier, every intermediate tensor's shape is recorded with its batch axis named ``batch``
    (no ``unk__N`` left by the pinned reshapes), or ``3*batch`` for the official family's tokens, flattened with
    the batch; each one what ONNX Runtime computes at batch 3. With them ONNX Runtime proves the official
    family's residual Adds' inputs equal and sums them inside the convs (NCHWc with AVX2, FusedConv's
    input Z with AVX-512) instead of running separate Adds."""
    import onnxruntime as ort

    from mfdeploy.model.families import build_family_model

    model = onnx_export.torch_to_onnx(build_family_model(arch, "26m", num_classes=10), 64, None, 17)
    model = onnx_export.simplify(onnx_export.pin_reshape_shapes(model)[0], "onnxslim")
    onnx.save(model, tmp_path / "unnamed.onnx")
    recorded = onnx_export.name_batch_axis(model)
    names = [out for node in model.graph.node for out in node.output if out != onnx_export.OUTPUT_NAME]
    assert recorded == len(model.graph.value_info) == len(names)
    params = {d.dim_param for v in model.graph.value_info for d in v.type.tensor_type.shape.dim if d.dim_param}
    tokens = get_family_config(arch, "26m").num_tokens
    assert params == ({"batch", f"{tokens}*batch"} if arch == "official" else {"batch"})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {onnx_export.INPUT_NAME: np.zeros((3, 3, 64, 64), np.float32)})
    for value_info, value in zip(model.graph.value_info, values):
        dims = [
            3 * int(d.dim_param.partition("*")[0] if "*" in d.dim_param else 1) if d.dim_param else d.dim_value
            for d in value_info.type.tensor_type.shape.dim
        ]
        assert dims == list(value.shape), value_info.name
    onnx.save(model, tmp_path / "model.onnx")
    ops = {
        name: Counter(node.op_type for node in optimized_graph(tmp_path / f"{name}.onnx").graph.node)
        for name in ("model", "unnamed")
    }
    if arch == "official":  # the seed family's residual Adds gain nothing: their shapes were proven already
        assert ops["model"]["Add"] < ops["unnamed"]["Add"], ops


def test_dropping_unused_nodes_keeps_what_a_subgraph_reads():
    from onnx import TensorProto, helper

    from mfdeploy.graph.topology import drop_unused_nodes

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [3])
        return helper.make_graph([helper.make_node(op, ["outer"], [f"{name}_out"])], name, [], [out])

    nodes = [
        helper.make_node("Relu", ["x"], ["outer"], name="read_by_the_branches_only"),
        helper.make_node("Neg", ["x"], ["dead"], name="dead"),
        helper.make_node("Abs", ["dead"], ["dead_too"], name="dead_too"),
        helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=0),
        helper.make_node("Cast", ["m"], ["cond"], name="cond", to=TensorProto.BOOL),
        helper.make_node(
            "If", ["cond"], ["y"], name="if", then_branch=branch("a", "Neg"), else_branch=branch("b", "Abs")
        ),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert drop_unused_nodes(model.graph) == 2
    assert [n.name for n in model.graph.node] == ["read_by_the_branches_only", "max", "cond", "if"]
    onnx.checker.check_model(model, full_check=True)
    assert drop_unused_nodes(model.graph) == 0


def test_node_names_keep_module_paths(artifact_52m):
    names = [node.name for node in onnx.load(str(artifact_52m / "model.onnx")).graph.node]
    for prefix in (
        "/stem/",
        "/lite_bneck/",
        "/blocks.3/to_mobile/",
        "/blocks.3/to_former/",
        "/blocks.3/former/",
        "/blocks.3/mobile/dyrelu/",
        "/final_to_former/",
        "/channel_conv/",
        "/head/",
    ):
        assert any(name.startswith(prefix) for name in names), prefix
    assert len(set(names)) == len(names)


def test_manifest_contents_and_hashes(artifact_52m):
    manifest = json.loads((artifact_52m / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["model"]["size"] == "52m" and manifest["model"]["num_classes"] == 1000
    assert manifest["model"]["imgsz"] == 224 and manifest["model"]["source"] == {"weights": "random", "seed": 0}
    pre = manifest["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["channel_order"], pre["value_range"]) == (256, 224, "RGB", [0.0, 1.0])
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert manifest["inputs"] == [{"name": "images", "shape": ["batch", 3, 224, 224], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}]
    assert manifest["onnx"]["opset"] == 17 and "TorchScript" in manifest["onnx"]["exporter"]
    graph = onnx.load(str(artifact_52m / "model.onnx"))
    histogram = manifest["onnx"]["op_histogram"]
    assert sum(histogram.values()) == len(graph.graph.node) == manifest["onnx"]["node_count"]
    for library in ("torch", "onnx", "onnxruntime", "onnxslim", "numpy", "python"):
        assert library in manifest["versions"]
    assert manifest["created"].startswith("20")
    for name in ("model.onnx", "weights.safetensors"):
        assert manifest["files"][name]["sha256"] == sha256_file(artifact_52m / name)
        assert manifest["files"][name]["bytes"] == (artifact_52m / name).stat().st_size
    assert manifest["verification"]["onnx"]["atol"] == 1e-4
    assert sorted(p.name for p in artifact_52m.iterdir()) == ["manifest.json", "model.onnx", "weights.safetensors"]


def test_reexport_is_byte_identical(cli, artifact_52m, tmp_path):
    result = cli("export", "--size", "52m", "--target", "onnx", "--out", tmp_path)
    assert result.code == 0, result.err
    assert sha256_file(tmp_path / "mobileformer_52m" / "model.onnx") == sha256_file(artifact_52m / "model.onnx")


def test_runners_share_one_interface(artifact_52m):
    artifact = Artifact.open(artifact_52m)
    torch_runner = TorchRunner.from_artifact(artifact)
    with OnnxRuntimeRunner(artifact.path("model.onnx"), threads=2) as ort_runner:
        for runner in (torch_runner, ort_runner):
            assert runner.inputs()[0].name == "images" and runner.outputs()[0].name == "logits"
            assert runner.inputs()[0].shape[1:] == (3, 224, 224)
        x = artifact.preprocessing.batch(__import__("mfdeploy.images.samples").images.samples.builtin_images(5))
        np.testing.assert_allclose(ort_runner.infer_all(x, 2), torch_runner.infer(x), atol=1e-4)


def test_static_batch_runner_pads_the_last_batch(tmp_path):
    result = export(ExportOptions(size="26m", imgsz=64, batch=4, num_classes=10, out=tmp_path))
    with OnnxRuntimeRunner(result.artifact / "model.onnx") as runner:
        assert runner.inputs()[0].fixed_batch == 4
        x = np.random.default_rng(0).standard_normal((6, 3, 64, 64)).astype(np.float32)
        torch_runner = TorchRunner.from_artifact(Artifact.open(result.artifact))
        np.testing.assert_allclose(runner.infer_all(x, 8), torch_runner.infer(x), atol=1e-4)


def test_unavailable_provider_is_a_clear_error(artifact_52m):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the missing-provider message cannot be shown here")
    from mfdeploy.errors import UserError

    with pytest.raises(UserError, match="CUDAExecutionProvider is not available.*mfdeploy\\[gpu\\]"):
        OnnxRuntimeRunner(artifact_52m / "model.onnx", provider="cuda")


def corrupt_one_conv(path, scale=3.0):
    """Scale the weights of the first block's expansion conv inside the ONNX file."""
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/blocks.0/mobile/pw1"))
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save(model, str(path))


def test_verification_fails_on_a_corrupted_model(artifact_52m, tmp_path):
    corrupted = tmp_path / "model.onnx"
    shutil.copy(artifact_52m / "model.onnx", corrupted)
    corrupt_one_conv(corrupted)
    artifact = Artifact.open(artifact_52m)
    with OnnxRuntimeRunner(corrupted) as candidate:
        report = verify_runner(TorchRunner.from_artifact(artifact), candidate, artifact.preprocessing, [1, 7])
    assert not report.passed
    assert report.worst_error > 1e-4
    message = report.failure_message()
    assert "max abs error" in message and "limit 0.0001" in message


def test_failed_verification_exits_non_zero_and_leaves_nothing(cli, tmp_path, monkeypatch):
    """A graph that no longer matches PyTorch is never kept: exit code 4, figures in the message."""
    real_simplify = onnx_export.simplify

    def simplify_then_corrupt(model, simplifier):
        model = real_simplify(model, simplifier)
        conv = next(n for n in model.graph.node if n.op_type == "Conv" and "/blocks.0/mobile/pw1" in n.name)
        init = next(i for i in model.graph.initializer if i.name == conv.input[1])
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
        return model

    monkeypatch.setattr(onnx_export, "simplify", simplify_then_corrupt)
    result = cli("export", "--size", "26m", "--out", tmp_path)
    assert result.code == 4
    assert "verification failed" in result.err and "max abs error" in result.err
    assert "Traceback" not in result.err
    assert list(tmp_path.iterdir()) == []


def bad(cli, *args):
    result = cli(*args)
    assert result.code != 0 and "Traceback" not in result.err, result.err
    return result


def test_bad_inputs_give_clear_errors_and_no_files(cli, tmp_path):
    out = tmp_path / "out"
    checks = [
        (["--batch", "0"], "--batch must be a positive"),
        (["--batch", "-2"], "--batch must be a positive"),
        (["--target", "tflite"], "unknown target 'tflite'"),
        (["--opset", "16"], "--opset 16 is too old"),
        (["--imgsz", "250"], "multiple of 32"),
        (["--batch", "2", "--dynamic-batch"], "either --batch"),
        (["--size", "12m"], "unknown size"),
    ]
    for args, message in checks:
        result = bad(cli, "export", "--out", out, *args)
        assert message in result.err, (args, result.err)
    assert not out.exists()


def test_non_empty_output_needs_force(cli, tmp_path):
    target = tmp_path / "mobileformer_26m"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    result = bad(cli, "export", "--size", "26m", "--out", tmp_path)
    assert "not empty" in result.err and "--force" in result.err
    assert (target / "keep.txt").read_text() == "user data"
    result = cli("export", "--size", "26m", "--out", tmp_path, "--force")
    assert result.code == 0, result.err
    # --force makes the artifact and keeps what the export did not make
    assert sorted(p.name for p in target.iterdir()) == [
        "keep.txt",
        "manifest.json",
        "model.onnx",
        "weights.safetensors",
    ]
    assert (target / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["mobileformer_26m"]  # no temporary folders left


def test_unwritable_output(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = bad(cli, "export", "--size", "26m", "--out", blocker / "sub")
    assert "is a file, not a folder" in result.err and "--out" in result.err


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as non-root: root may write anywhere, so chmod cannot deny it")
def test_unwritable_output_folder(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert not os.access(locked, os.W_OK)  # the denial this test is about really happens here
        result = bad(cli, "export", "--size", "26m", "--out", locked)
        assert "permission denied" in result.err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_weights_of_another_size_or_class_count(cli, tmp_path):
    ckpt = save_checkpoint(build_model("26m", num_classes=10), tmp_path / "digits.safetensors")
    result = bad(cli, "export", "--size", "52m", "--weights", ckpt, "--out", tmp_path / "o")
    assert "26m with 10 classes" in result.err and "--size 26m" in result.err
    result = bad(cli, "export", "--size", "26m", "--num-classes", "1000", "--weights", ckpt, "--out", tmp_path / "o")
    assert "--num-classes 10" in result.err
    assert not (tmp_path / "o").exists()


def test_trained_checkpoint_exports_with_its_own_preprocessing(cli, tmp_path, digits_checkpoint):
    result = cli("export", "--weights", digits_checkpoint, "--out", tmp_path, "--json")
    assert result.code == 0, result.err
    manifest = result.json()
    assert manifest["model"]["size"] == "26m" and manifest["model"]["num_classes"] == 10
    assert manifest["model"]["imgsz"] == DIGITS_IMGSZ
    assert manifest["preprocessing"]["resize"] == round(DIGITS_IMGSZ / 0.875)  # the training's own
    assert manifest["model"]["classes"] == [str(i) for i in range(10)]
    assert manifest["model"]["source"]["sha256"] == sha256_file(digits_checkpoint)
    assert "random weights" not in result.err


def test_verify_command(cli, artifact_52m, tmp_path):
    result = cli("verify", artifact_52m, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["passed"] and {c["batch"] for c in report["cases"]} == {1, 7, 32}

    copy = tmp_path / "copy"
    shutil.copytree(artifact_52m, copy)
    corrupt_one_conv(copy / "model.onnx")
    result = bad(cli, "verify", copy)
    assert "changed since it was written" in result.err

    # Even with its hash re-recorded (someone edited the graph and the manifest), the numbers give it away.
    artifact = Artifact.open(copy)
    artifact.record_file("model.onnx")
    artifact.save()
    result = bad(cli, "verify", copy)
    assert result.code == 4 and "verification failed" in result.err

    result = bad(cli, "verify", tmp_path)
    assert "no manifest.json" in result.err


@pytest.mark.gpu
def test_verify_on_cuda_provider(cli, artifact_52m):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with a CUDA GPU (this host's onnxruntime has no CUDAExecutionProvider)")
    # CUDA kernels may use TF32 for matmuls: allow what that precision gives, top-1 must still agree.
    result = cli("verify", artifact_52m, "--provider", "cuda", "--atol", "5e-3", "--json")
    assert result.code == 0, result.err
    assert "CUDAExecutionProvider" in result.json()["candidate"]
