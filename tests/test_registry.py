"""Target names map to runners; a target that cannot run here says why instead of failing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mfdeploy.artifacts import Artifact
from mfdeploy.errors import UserError
from mfdeploy.runtime.registry import TARGETS, TargetUnavailable, create_runner, parse_targets


@pytest.fixture(scope="module")
def artifact_26m(tmp_path_factory, small_export):
    copy = tmp_path_factory.mktemp("reg") / small_export.name
    shutil.copytree(small_export, copy)
    return Artifact.open(copy)


def test_parse_targets():
    assert parse_targets("onnx, torch,onnx") == ["onnx", "torch"]
    with pytest.raises(UserError, match="unknown target 'tflite'; valid targets are torch, onnx"):
        parse_targets("onnx,tflite")
    with pytest.raises(UserError, match="no target given"):
        parse_targets(" , ")


def test_torch_and_onnx_runners_from_an_artifact(artifact_26m):
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    outputs = {}
    for name in ("torch", "onnx"):
        with create_runner(name, artifact_26m, threads=2) as runner:
            outputs[name] = runner.infer(x)
            assert runner.outputs()[0].name == "logits"
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=1e-4)


def test_torch_runner_puts_the_thread_count_back_when_closed(artifact_26m):
    """torch's thread count belongs to the process: a runner with its own count must not leave it set."""
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    with create_runner("torch", artifact_26m, threads=other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("name", ["onnx-int8", "trt-fp16", "coreml"])
def test_missing_files_are_reported_with_the_command_that_makes_them(artifact_26m, name):
    if artifact_26m.path(TARGETS[name].file).exists():
        pytest.skip(f"this artifact already has {TARGETS[name].file}")
    with pytest.raises(TargetUnavailable) as info:
        create_runner(name, artifact_26m)
    assert TARGETS[name].file in info.value.reason and "mfdeploy " in info.value.reason
