"""The benchmark's arithmetic on known inputs: percentiles, the summary, the spread rules, and the mapping
of profiled layer names to model stages. No timing is measured or asserted here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfdeploy.benchmark.stages import layer_stage, summarize_profile
from mfdeploy.benchmark.stats import Summary, percentile, spread_warnings, summarize
from mfdeploy.model.stages import OTHER, stage_of, stage_order
from mfdeploy.runtime.base import LayerRecord
from mfdeploy.runtime.timing import TimingPlan, time_calls


@pytest.mark.parametrize(
    "samples,q,expected",
    [
        ([15, 20, 35, 40, 50], 40, 29.0),  # rank 1.6: 20 + 0.6 * (35 - 20)
        ([15, 20, 35, 40, 50], 50, 35.0),
        ([15, 20, 35, 40, 50], 90, 46.0),  # rank 3.6: 40 + 0.6 * 10
        ([50, 15, 40, 20, 35], 90, 46.0),  # order of the input does not matter
        (list(range(1, 11)), 50, 5.5),
        (list(range(1, 11)), 90, 9.1),
        (list(range(1, 11)), 95, 9.55),
        (list(range(1, 11)), 99, 9.91),
        (list(range(1, 11)), 0, 1.0),
        (list(range(1, 11)), 100, 10.0),
        (list(range(1, 101)), 99, 99.01),
        ([3.0], 99, 3.0),
        ([2.0, 2.0, 2.0, 8.0], 50, 2.0),
    ],
)
def test_percentile_on_known_samples(samples, q, expected):
    assert percentile(samples, q) == pytest.approx(expected, abs=1e-12)


def test_percentile_agrees_with_numpy_linear_method():
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 17, 200, 1001):
        samples = rng.lognormal(0.0, 0.5, n).tolist()
        for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert percentile(samples, q) == pytest.approx(np.percentile(samples, q, method="linear"), rel=1e-12)


def test_percentile_rejects_what_has_no_answer():
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summary_of_known_samples():
    s = summarize([2, 4, 4, 4, 5, 5, 7, 9])
    assert (s.n, s.mean, s.min, s.max, s.p50) == (8, 5.0, 2.0, 9.0, 4.5)
    assert s.std == pytest.approx(math.sqrt(32 / 7))  # sample std (n - 1); population std would be 2.0
    assert s.p90 == pytest.approx(7.6) and s.p99 == pytest.approx(8.86)
    single = summarize([1.5])
    assert single.std == 0.0 and single.p99 == 1.5 and single.n == 1
    assert set(s.to_dict()) == {"n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max"}
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def _summary(p50: float, p99: float, std: float = 0.0, n: int = 200) -> Summary:
    return Summary(n=n, mean=p50, std=std, min=p50 * 0.9, p50=p50, p90=p50, p95=p50, p99=p99, max=p99)


def test_spread_rules():
    assert spread_warnings(_summary(1.0, 1.9, std=0.05), "onnx b1") == []
    tail = spread_warnings(_summary(1.0, 2.5), "onnx b1")
    assert len(tail) == 1 and "p99" in tail[0] and "2.5x p50" in tail[0] and tail[0].startswith("onnx b1")
    wide = spread_warnings(_summary(1.0, 1.5, std=0.4), "torch b8")
    assert len(wide) == 1 and "40% of the mean" in wide[0]
    few = spread_warnings(_summary(1.0, 1.1, n=12), "x")
    assert len(few) == 1 and "only 12 timed runs" in few[0]


def test_timing_plan_validation_and_min_time():
    with pytest.raises(ValueError):
        TimingPlan(runs=0)
    with pytest.raises(ValueError):
        TimingPlan(runs=None, min_time_s=None)
    with pytest.raises(ValueError):
        TimingPlan(runs=10, min_time_s=1.0)
    with pytest.raises(ValueError):
        TimingPlan(warmup=-1)
    calls = []
    samples = time_calls(calls.append, 1, TimingPlan(warmup=0, runs=None, min_time_s=0.001, min_runs=25))
    assert len(samples) == len(calls) >= 25  # --min-time still makes at least min_runs calls
    assert all(math.isfinite(s) and s >= 0 for s in samples)
    assert len(time_calls(calls.append, 1, TimingPlan(warmup=0, runs=7))) == 7


@pytest.mark.parametrize(
    "name,stage",
    [
        ("/blocks.3/to_mobile/MatMul", "blocks.3"),
        ("/blocks.10/former/attn/heads/Mul", "blocks.10"),  # "heads" is not the head stage
        ("/stem/conv_bn/conv/Conv_output_0_nchwc", "stem"),
        ("/lite_bneck/dw/conv/Conv", "lite_bneck"),
        ("/final_to_former/MatMul_1", "final_to_former"),
        ("/channel_conv/conv/Conv + /channel_conv/act/Relu", "channel_conv"),
        ("/head/fc1/Gemm", "head"),
        ("PWN(/blocks.3/mobile/act/Max)", "blocks.3"),  # TensorRT pointwise fusion
        ("{ForeignNode[/final_to_former/MatMul.../head/fc2/Gemm]}", "final_to_former"),
        ("Reformatting CopyNode for Input Tensor 0 to /head/fc1/Gemm", "head"),
        ("blocks_3_mobile_conv1", "blocks.3"),  # underscore paths (Core ML op names from a trace)
        ("ReorderOutput_token_97", OTHER),
        ("HardSigmoid_570", OTHER),
        ("system/headline", OTHER),
        ("", OTHER),
    ],
)
def test_stage_of_layer_names(name, stage):
    assert stage_of(name) == stage


def test_renamed_layers_use_their_scope_and_stages_sort_in_model_order():
    assert layer_stage(LayerRecord("ReorderInput", scope="/lite_bneck/act/Relu_output_0")) == "lite_bneck"
    assert layer_stage(LayerRecord("/head/fc1/Gemm", scope="/stem/x")) == "head"  # the name wins when it maps
    assert layer_stage(LayerRecord("Transpose_token_12")) == OTHER
    stages = ["head", "blocks.10", OTHER, "blocks.2", "stem", "final_to_former", "lite_bneck", "channel_conv"]
    assert sorted(stages, key=stage_order) == [
        "stem", "lite_bneck", "blocks.2", "blocks.10", "final_to_former", "channel_conv", "head", OTHER,
    ]  # fmt: skip


def test_profile_summary_totals_top_layers_and_cost_only_profiles():
    records = [
        LayerRecord("/stem/conv/Conv", "Conv", time_ms=1.0, calls=5, device="CPU"),
        LayerRecord("/blocks.0/former/MatMul", "MatMul", time_ms=3.0, calls=5, device="CPU"),
        LayerRecord("/blocks.0/mobile/Conv", "Conv", time_ms=2.0, calls=5, device="GPU"),
        LayerRecord("ReorderOutput_token_1", "ReorderOutput", time_ms=4.0, calls=5, device="CPU"),
    ]
    summary = summarize_profile(records, top=2)
    assert summary["metric"] == "time_ms" and summary["total"] == 10.0 and summary["layers"] == 4
    assert [(s["stage"], s["value"], s["layers"]) for s in summary["stages"]] == [
        ("stem", 1.0, 1),
        ("blocks.0", 5.0, 2),
        (OTHER, 4.0, 1),
    ]
    assert sum(s["share"] for s in summary["stages"]) == pytest.approx(1.0)
    assert summary["mapped_share"] == pytest.approx(0.6)
    assert [t["name"] for t in summary["top_layers"]] == ["ReorderOutput_token_1", "/blocks.0/former/MatMul"]
    assert summary["devices"] == {"CPU": 0.8, "GPU": 0.2} and summary["ops"]["Conv"] == 0.3
    costs = [
        LayerRecord("/head/fc", estimated_cost=0.25, device="NeuralEngine"),
        LayerRecord("/stem/c", estimated_cost=0.75),
    ]
    by_cost = summarize_profile(costs)
    assert by_cost["metric"] == "estimated_cost" and by_cost["top_layers"][0]["stage"] == "stem"
