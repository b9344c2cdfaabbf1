"""The numpy MIL evaluator: its kernels against PyTorch, and whole converted programs against the
PyTorch modules they came from (real coremltools conversions, evaluated in FP32 and FP16)."""

from __future__ import annotations

import coremltools as ct  # the dev extra installs it: a missing coremltools fails here, never skips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mfdeploy.runtime.mil_evaluator import MILEvaluationError, MILEvaluator
from mfdeploy.runtime.mil_ops import conv2d, pool2d

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, dilation, groups",
    [
        (3, 8, 3, 2, 1, 1, 1),  # the stem
        (8, 24, 1, 1, 0, 1, 1),  # pointwise
        (24, 12, 1, 1, 0, 1, 4),  # grouped pointwise (26m)
        (24, 24, (3, 1), (2, 1), (1, 0), 1, 24),  # the lite bottleneck's depthwise pair
        (24, 24, (1, 3), (1, 2), (0, 1), 1, 24),
        (12, 12, 3, 2, 1, 1, 12),  # stride-2 depthwise downsample
        (8, 8, 3, 1, 2, 2, 8),  # dilated depthwise
        (8, 16, 3, 1, 1, 1, 2),  # grouped 3x3 (im2col path)
        (6, 4, 5, 2, 2, 1, 1),  # 5x5, stride 2
        (4, 6, (3, 2), (1, 2), (2, 0), (2, 1), 2),  # rectangular, dilated, grouped
        (8, 16, 1, 2, 0, 1, 1),  # strided 1x1
    ],
)
def test_conv2d_matches_torch(c_in, c_out, kernel, stride, padding, dilation, groups):
    x = RNG.standard_normal((2, c_in, 17, 14)).astype(np.float32)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = RNG.standard_normal((c_out, c_in // groups, kh, kw)).astype(np.float32)
    bias = RNG.standard_normal(c_out).astype(np.float32)
    expected = F.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride, padding, dilation, groups
    )
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    ph, pw = pair(padding)
    got = conv2d(x, weight, bias, pair(stride), [(ph, ph), (pw, pw)], pair(dilation), groups)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(
    "kernel, stride, padding, ceil_mode, include_pad",
    [
        (3, 2, 1, False, True),
        (3, 2, 1, True, False),
        (2, 2, 0, True, True),
        (3, 1, 1, False, False),
        (3, 3, 0, True, False),
    ],
)
def test_pool2d_matches_torch(kind, kernel, stride, padding, ceil_mode, include_pad):
    x = torch.from_numpy(RNG.standard_normal((2, 3, 11, 10)).astype(np.float32))
    if kind == "max":
        expected = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    else:
        expected = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=include_pad)
    got = pool2d(
        x.numpy(), kind, (kernel, kernel), (stride, stride), [(padding, padding)] * 2, ceil_mode, not include_pad
    )
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


class _OpZoo(nn.Module):
    """Convolutions, pools and elementwise ops in the configurations the converter emits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.same = nn.Conv2d(8, 8, 3, padding="same", groups=8, dilation=2)
        self.rect = nn.Conv2d(8, 16, (3, 1), (2, 1), (1, 0), groups=4)
        self.max = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(16, 5)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.stem(x))
        x = F.relu(self.same(x)) + x
        x = self.avg(self.max(self.rect(x)))
        pooled = F.gelu(self.norm(x.mean(dim=(2, 3))))
        return self.fc(pooled).softmax(-1) * torch.erf(pooled[:, :5])


@pytest.fixture(scope="module")
def op_zoo():
    torch.manual_seed(0)
    model = _OpZoo().eval()
    example = torch.from_numpy(RNG.standard_normal((1, 3, 40, 36)).astype(np.float32))
    traced = torch.jit.trace(model, example)
    programs = {}
    for precision in ("fp32", "fp16"):
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="x", shape=example.shape, dtype=np.float32)],
            outputs=[ct.TensorType(name="y", dtype=np.float32)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            minimum_deployment_target=ct.target.iOS16,
            skip_model_load=True,
        )
        programs[precision] = mlmodel._mil_program
    with torch.no_grad():
        expected = model(example).numpy()
    return programs, example.numpy(), expected


def test_a_converted_program_matches_torch_in_fp32(op_zoo):
    programs, x, expected = op_zoo
    evaluator = MILEvaluator(programs["fp32"], "fp32")
    assert {"conv", "max_pool", "avg_pool", "reduce_mean", "gelu", "layer_norm", "softmax"} <= set(evaluator.op_types())
    assert evaluator.unsupported_ops() == []
    np.testing.assert_allclose(evaluator.run({"x": x})["y"], expected, rtol=1e-4, atol=1e-5)


def test_fp16_mode_rounds_every_op_and_stays_close(op_zoo):
    programs, x, expected = op_zoo
    fp16 = MILEvaluator(programs["fp16"], "fp16").run({"x": x}, keep=())
    fp32_of_fp16_program = MILEvaluator(programs["fp16"], "fp32").run({"x": x})["y"]
    # FP16 compute lands near, but not on, the float32 result; and its values are fp16-representable
    # until the final cast back to fp32.
    assert not np.array_equal(fp16["y"], fp32_of_fp16_program)
    np.testing.assert_allclose(fp16["y"], expected, rtol=0.05, atol=5e-3)
    evaluator = MILEvaluator(programs["fp16"], "fp16")
    conv = next(op for op in evaluator.function.operations if op.op_type == "conv")
    value = evaluator.run({"x": x}, keep=(conv.outputs[0].name,))[conv.outputs[0].name]
    np.testing.assert_array_equal(value, value.astype(np.float16).astype(np.float32))


def test_bad_inputs_are_named(op_zoo):
    programs, x, _ = op_zoo
    evaluator = MILEvaluator(programs["fp32"], "fp32")
    with pytest.raises(MILEvaluationError, match="missing inputs"):
        evaluator.run({})
    with pytest.raises(MILEvaluationError, match=r"input 'x' has shape \(1, 3, 20, 36\)"):
        evaluator.run({"x": x[:, :, :20]})
    with pytest.raises(ValueError, match="precision"):
        MILEvaluator(programs["fp32"], "int8")


def test_fp16_rounding_is_numpys_bit_for_bit():
    """The evaluator rounds every value to float16 with torch (fast); the bits must be numpy's astype."""
    from mfdeploy.runtime.mil_evaluator import _fp16_rounded

    bits = np.random.default_rng(0).integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, 6e-8, 3e-8, 65504.0, 65520.0, 1e6, np.inf, -np.inf, np.nan], np.float32)
    values = np.concatenate([bits.view(np.float32), specials]).reshape(-1, 2)
    read_only = values.copy()
    read_only.flags.writeable = False
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and overflow bits are part of the point
        cases = (values, values[:, 1], read_only, values.astype(np.float64), np.float32(70000.0))
        expected_values = [np.asarray(case).astype(np.float16).astype(np.float32) for case in cases]
    for array, expected in zip(cases, expected_values, strict=True):
        with np.errstate(over="ignore"):  # float64 goes numpy's way, which says so
            got = _fp16_rounded(np.asarray(array))
        assert got.dtype == np.float32 and got.shape == expected.shape
        finite = ~np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), ~finite)
        np.testing.assert_array_equal(got.view(np.uint32)[finite], expected.view(np.uint32)[finite])


def test_runs_reuse_their_op_stand_ins_without_carrying_values_over(op_zoo):
    """Each op's value_inference stand-in is made once and reused; a run sees only its own inputs and leaves
    no array behind in them."""
    programs, x, _ = op_zoo
    other = RNG.standard_normal(x.shape).astype(np.float32)
    for precision in ("fp32", "fp16"):
        reused = MILEvaluator(programs[precision], precision)
        first, second, first_again = (reused.run({"x": image})["y"] for image in (x, other, x))
        assert not np.array_equal(first, second)
        np.testing.assert_array_equal(first, first_again)
        np.testing.assert_array_equal(second, MILEvaluator(programs[precision], precision).run({"x": other})["y"])
        stand_ins = [step.shadow for step in reused._steps if step.shadow is not None]
        assert stand_ins and all(step.op is not step.shadow for step in reused._steps)
        assert all(holder.val is None for step in reused._steps for holder, _ in step.holders)
        reused.run({"x": other})
        again = [step.shadow for step in reused._steps if step.shadow is not None]
        assert len(again) == len(stand_ins) and all(a is b for a, b in zip(again, stand_ins))  # the same objects


class _Selections(nn.Module):
    """Ops that only move or select values (reshape, transpose, split, slices, concat, gather, max/min, relu)
    between ops that compute new ones."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 12)
        self.register_buffer("order", torch.tensor([3, 0, 2, 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.reshape(2, 4, 12) * 1.7)  # [2, 4, 12]
        a, b = h.split(6, dim=-1)
        y = torch.cat([torch.maximum(a, b * 0.3), torch.relu(b - 0.1)], dim=1).transpose(1, 2)  # [2, 6, 8]
        y = y.index_select(2, torch.cat([self.order, self.order + 4]))[:, 1:5] + y.amax(1, keepdim=True) / 3
        return torch.minimum(y, y.amin(2, keepdim=True) + 0.7).flatten(1).softmax(-1)


def test_values_of_selecting_ops_skip_a_rounding_that_would_change_nothing(monkeypatch):
    from mfdeploy.runtime import mil_evaluator

    torch.manual_seed(0)
    model = _Selections().eval()
    x = RNG.standard_normal((2, 48)).astype(np.float32)
    mlmodel = ct.convert(
        torch.jit.trace(model, torch.from_numpy(x)),
        inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)],
        outputs=[ct.TensorType(name="y", dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
        skip_model_load=True,
    )
    program = mlmodel._mil_program
    evaluator = MILEvaluator(program, "fp16")
    selecting = [step for step in evaluator._steps if step.op.op_type in mil_evaluator.VALUE_SELECTING_OPS]
    assert {"reshape", "split", "concat", "transpose", "maximum", "minimum"} <= {s.op.op_type for s in selecting}
    names = tuple(name for step in selecting for name in step.outputs)
    skipped = evaluator.run({"x": x}, keep=names)
    for name in names:  # what skipped the rounding is float16-representable all the same
        value = np.asarray(skipped[name])
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_array_equal(value, value.astype(np.float16).astype(np.float32))
    for precision in ("fp16", "fp32"):
        fast = MILEvaluator(program, precision).run({"x": x}, keep=names)
        with monkeypatch.context() as patch:
            patch.setattr(mil_evaluator, "VALUE_SELECTING_OPS", frozenset())
            every_value_rounded = MILEvaluator(program, precision).run({"x": x}, keep=names)
        for name, value in fast.items():
            np.testing.assert_array_equal(value, every_value_rounded[name])
    with torch.no_grad():
        np.testing.assert_allclose(skipped["y"], model(torch.from_numpy(x)).numpy(), rtol=0.02, atol=2e-3)
