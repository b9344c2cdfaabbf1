"""The TensorRT Python names mfdeploy uses exist in TensorRT 10.x and 11.x: a check that runs on hosts without
TensorRT, against names extracted from the bindings' sources (mfdeploy/runtime/data/tensorrt_python_api.json).

What passing proves: every ``tensorrt`` module attribute, enum value, method, property and keyword argument
that the checker can attribute (see mfdeploy/runtime/tensorrt_api.py) is defined by the pybind11 bindings of
each version in the data file. What it does not prove: argument types or counts, return types, behaviour, or
that anything succeeds at run time; the GPU tests in test_tensorrt.py do that where hardware exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mfdeploy.runtime.tensorrt_api import CHECKED_MODULES, RETURNS, check_source, load_api, tensorrt_uses

ROOT = Path(__file__).resolve().parent.parent


def test_the_data_names_its_source_and_covers_10_and_11():
    api = load_api()
    assert "github.com/NVIDIA/TensorRT" in api["source"]["repo"] and api["source"]["extracted"]
    assert api["proves"] and api["does_not_prove"]
    majors = {version.split(".")[0] for version in api["versions"]}
    assert {"10", "11"} <= majors
    for version, entry in api["versions"].items():
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), version
        assert "python/src/infer/pyCore.cpp" in entry["files"] and "python/src/parsers/pyOnnx.cpp" in entry["files"]
        # the extraction found what any TensorRT has: a sanity floor, not the check itself
        assert {"Builder", "Runtime", "OnnxParser", "Logger", "nptype", "__version__"} <= set(entry["module"])


def test_every_module_importing_tensorrt_is_checked():
    importing = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "mfdeploy").rglob("*.py")
        if re.search(r"^\s*import tensorrt\b", path.read_text(), re.M)
    }
    assert importing == set(CHECKED_MODULES)


@pytest.mark.parametrize("module", CHECKED_MODULES)
def test_every_tensorrt_name_we_use_exists_in_10_and_11(module):
    source = (ROOT / module).read_text()
    uses = tensorrt_uses(source)
    assert uses, f"the checker found no TensorRT use in {module}"
    assert check_source(source) == []


def test_the_calls_that_matter_are_seen_by_the_checker():
    """The checker attributes methods to their TensorRT class: without that, a misspelt method on an engine
    or a context would pass unseen. These are the calls issue 14 is about."""
    seen = set()
    for module in CHECKED_MODULES:
        seen |= {(u.owner, u.name, u.keyword) for u in tensorrt_uses((ROOT / module).read_text())}
    assert {
        ("ICudaEngine", "get_tensor_profile_shape", None),
        ("IExecutionContext", "set_input_shape", None),
        ("IExecutionContext", "set_tensor_address", None),
        ("IExecutionContext", "execute_async_v3", None),
        ("Runtime", "deserialize_cuda_engine", None),
        ("ICudaEngine", "create_execution_context", None),
        ("Builder", "build_serialized_network", None),
        ("OnnxParser", "parse_from_file", None),
        ("IBuilderConfig", "set_timing_cache", "ignore_mismatch"),
        ("IBuilderConfig", "get_timing_cache", None),
        ("ITimingCache", "combine", "ignore_mismatch"),
        ("IBuilderConfig", "clear_flag", None),
        ("BuilderFlag", "TF32", None),
        ("IProfiler", "report_layer_time", None),
    } <= seen


def test_the_return_types_the_checker_follows_exist():
    for version, entry in load_api()["versions"].items():
        for (owner, member), returned in RETURNS.items():
            assert member in entry["classes"][owner], (version, owner, member)
            assert returned in entry["classes"], (version, returned)


BROKEN = [
    ("trt.Bulder(logger)", "tensorrt.Bulder"),
    ("flag = trt.BuilderFlag.TF23", "tensorrt.BuilderFlag.TF23"),
    ("builder = trt.Builder(logger)\nbuilder.create_netwrk(0)", "tensorrt.Builder.create_netwrk"),
    (
        "builder = trt.Builder(logger)\nconfig = builder.create_builder_config()\n"
        "config.set_timing_cache(cache, ignore_missmatch=False)",
        "tensorrt.IBuilderConfig.set_timing_cache(..., ignore_missmatch=...)",
    ),
    (
        "runtime = trt.Runtime(logger)\nengine = runtime.deserialize_cuda_engine(b'')\n"
        "engine.get_tensor_profile_shapes('images', 0)",
        "tensorrt.ICudaEngine.get_tensor_profile_shapes",
    ),
    (
        "def save(config: trt.IBuilderConfig):\n    config.get_timing_cache().combine(other, ignore_mismatches=True)",
        "tensorrt.ITimingCache.combine(..., ignore_mismatches=...)",
    ),
    ("class P(trt.IProfiler):\n    def report_layer_times(self, name, ms):\n        pass", "report_layer_times"),
    ("self.trt = trt\nself.trt.nptyp(1)", "tensorrt.nptyp"),
]


@pytest.mark.parametrize("body, named", BROKEN, ids=[named for _, named in BROKEN])
def test_the_checker_fails_on_a_name_broken_on_purpose(body, named):
    source = "import tensorrt as trt\n" + body + "\n"
    problems = check_source(source)
    assert problems and all(named in problem for problem in problems), problems
    assert {problem.split(":")[0] for problem in problems} == {f"TensorRT {v}" for v in load_api()["versions"]}


def test_one_misspelt_call_in_the_real_runner_fails_the_check():
    source = (ROOT / "mfdeploy/runtime/tensorrt_runner.py").read_text()
    assert "execute_async_v3(" in source
    problems = check_source(source.replace("execute_async_v3(", "execute_async_v4(", 1))
    assert problems and all("IExecutionContext.execute_async_v4" in p for p in problems)
