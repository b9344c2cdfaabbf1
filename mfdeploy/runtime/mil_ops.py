"""Numpy kernels for the MIL ops whose coremltools ``value_inference`` is missing or unusable.

:mod:`mfdeploy.runtime.mil_evaluator` walks a program and evaluates most ops with coremltools' own
``value_inference``; the ops in :data:`NUMPY_OPS` are evaluated here instead:

- ``conv``, ``avg_pool``, ``max_pool`` and ``classify`` have no ``value_inference``;
- ``erf`` and ``gelu`` have one that calls ``math.erf`` once per element (correct, too slow for images);
- ``reduce_*`` pass a numpy bool ``keep_dims`` (as read back from a saved package) to numpy 2, which
  rejects it.

Each op function takes the op (for its type and name) and its inputs as plain numpy values by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class MILEvaluationError(RuntimeError):
    """The program holds an op this evaluator cannot compute, or an op failed on the given inputs."""


def _pads_2d(
    pad_type: str,
    pad: np.ndarray | None,
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
) -> list[tuple[int, int]]:
    """(before, after) padding of H and W for MIL's pad_type valid/custom/same/same_lower."""
    if pad_type == "valid":
        return [(0, 0), (0, 0)]
    if pad_type == "custom":
        values = [int(p) for p in (pad if pad is not None else [0, 0, 0, 0])]
        return [(values[0], values[1]), (values[2], values[3])]
    if pad_type not in ("same", "same_lower"):
        raise MILEvaluationError(f"unknown pad_type {pad_type!r}")
    pads = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


def _ints(value: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    return default if value is None else tuple(int(v) for v in np.asarray(value).reshape(-1))


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    pads: list[tuple[int, int]] | None = None,
    dilations: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """NCHW convolution (cross-correlation, as in PyTorch and Core ML) with groups, strides, padding
    and dilations; float32 accumulation.

    Three vectorised paths: a 1x1 convolution is one matmul per group; a depthwise convolution sums
    kh*kw shifted multiply-adds over the whole tensor; anything else gathers patches with a strided
    view (im2col without a copy until the matmul) and runs one matmul per group.
    """
    x = np.asarray(x, np.float32)
    weight = np.asarray(weight, np.float32)
    n, c_in, _, _ = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in != c_per_group * groups or c_out % groups:
        raise MILEvaluationError(
            f"conv: input has {c_in} channels, weight {tuple(weight.shape)} does not fit groups={groups}"
        )
    pads = pads or [(0, 0), (0, 0)]
    if any(p for pair in pads for p in pair):
        x = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    sh, sw = strides
    dh, dw = dilations
    height, width = x.shape[2], x.shape[3]
    out_h = (height - (kh - 1) * dh - 1) // sh + 1
    out_w = (width - (kw - 1) * dw - 1) // sw + 1
    out_per_group = c_out // groups

    if kh == kw == 1:
        xs = x[:, :, : (out_h - 1) * sh + 1 : sh, : (out_w - 1) * sw + 1 : sw]
        xg = xs.reshape(n, groups, c_per_group, out_h * out_w)
        wg = weight.reshape(groups, out_per_group, c_per_group)
        out = np.matmul(wg[None], xg).reshape(n, c_out, out_h, out_w)
    elif c_per_group == 1 and out_per_group == 1:  # depthwise
        out = np.zeros((n, c_out, out_h, out_w), np.float32)
        for i in range(kh):
            for j in range(kw):
                window = x[
                    :, :, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw
                ]
                out += window * weight[:, 0, i, j][None, :, None, None]
    else:
        windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :out_h, :out_w]  # [N, C, oh, ow, kh, kw]
        out = np.empty((n, c_out, out_h, out_w), np.float32)
        for g in range(groups):
            patches = windows[:, g * c_per_group : (g + 1) * c_per_group]
            patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, c_per_group * kh * kw)
            w = weight[g * out_per_group : (g + 1) * out_per_group].reshape(out_per_group, -1)
            result = patches @ w.T  # [N*oh*ow, out_per_group]
            out[:, g * out_per_group : (g + 1) * out_per_group] = result.reshape(n, out_h, out_w, -1).transpose(
                0, 3, 1, 2
            )
    if bias is not None:
        out += np.asarray(bias, np.float32).reshape(1, -1, 1, 1)
    return out


def pool2d(
    x: np.ndarray,
    kind: str,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: list[tuple[int, int]],
    ceil_mode: bool = False,
    exclude_padding: bool = False,
) -> np.ndarray:
    """NCHW max or average pooling. ``ceil_mode`` adds windows that start inside the (left-padded)
    input; the cells they reach beyond the padding never count, as in Core ML and PyTorch."""
    x = np.asarray(x, np.float32)
    kh, kw = kernel
    sh, sw = strides
    extra = []
    out_sizes = []
    for size, k, s, (before, after) in zip(x.shape[2:], kernel, strides, pads):
        span = size + before + after - k
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + before:
            out -= 1
        out_sizes.append(out)
        extra.append(max((out - 1) * s + k - (size + before + after), 0))
    (pt, pb), (pl, pr) = pads
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb + extra[0]), (pl, pr + extra[1])), constant_values=fill)
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, : out_sizes[0], : out_sizes[1]]
    if kind == "max":
        return windows.max(axis=(-2, -1))
    total = windows.sum(axis=(-2, -1))
    # How many cells of each window are real input (exclude_padding) or input + declared padding.
    ones = np.zeros(padded.shape[2:], np.float32)
    h, w = x.shape[2:]
    if exclude_padding:
        ones[pt : pt + h, pl : pl + w] = 1.0
    else:
        ones[: pt + h + pb, : pl + w + pr] = 1.0
    counts = sliding_window_view(ones, (kh, kw))[::sh, ::sw][: out_sizes[0], : out_sizes[1]].sum(axis=(-2, -1))
    return total / counts


def _conv_op(op, v: Mapping[str, Any]) -> np.ndarray:
    x, weight = v["x"], v["weight"]
    if x.ndim != 4:
        raise MILEvaluationError(f"conv: only 2-D convolutions are supported, got a rank-{x.ndim} input")
    strides = _ints(v.get("strides"), (1, 1))
    dilations = _ints(v.get("dilations"), (1, 1))
    pads = _pads_2d(str(v.get("pad_type", "valid")), v.get("pad"), x.shape[2:], weight.shape[2:], strides, dilations)
    groups = int(v.get("groups", 1) if v.get("groups") is not None else 1)
    return conv2d(x, weight, v.get("bias"), strides, pads, dilations, groups)


def _pool_op(kind: str) -> Callable[[Any, Mapping[str, Any]], np.ndarray]:
    def run(op, v: Mapping[str, Any]) -> np.ndarray:
        x = v["x"]
        if x.ndim != 4:
            raise MILEvaluationError(f"{op.op_type}: only 2-D pooling is supported, got a rank-{x.ndim} input")
        kernel = _ints(v["kernel_sizes"], (1, 1))
        strides = _ints(v.get("strides"), (1, 1))
        pads = _pads_2d(str(v.get("pad_type", "valid")), v.get("pad"), x.shape[2:], kernel, strides, (1, 1))
        return pool2d(
            x,
            kind,
            kernel,
            strides,
            pads,
            bool(v.get("ceil_mode", False)),
            bool(v.get("exclude_padding_from_average", False)),
        )

    return run


def _erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf (scipy's, which coremltools' own value_inference matches element by element)."""
    from scipy.special import erf

    return erf(np.asarray(x, np.float32))


def _erf_op(op, v: Mapping[str, Any]) -> np.ndarray:
    return _erf(v["x"])


def _gelu_op(op, v: Mapping[str, Any]) -> np.ndarray:
    x = np.asarray(v["x"], np.float32)
    mode = str(v.get("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise MILEvaluationError(f"gelu: unknown mode {mode!r}")


def _reduce_op(function: Callable[..., np.ndarray]) -> Callable[[Any, Mapping[str, Any]], np.ndarray]:
    """reduce_* ops. coremltools' value_inference passes the stored ``keep_dims`` (a numpy bool once a
    program is read back from disk) straight to numpy, which numpy 2 rejects."""

    def run(op, v: Mapping[str, Any]) -> np.ndarray:
        x = np.asarray(v["x"], np.float32)
        axes = v.get("axes")
        axis = None if axes is None else tuple(int(a) for a in np.asarray(axes).reshape(-1))
        return function(x, axis=axis, keepdims=bool(v.get("keep_dims", False)))

    return run


def _classify_op(op, v: Mapping[str, Any]) -> tuple[Any, Any]:
    """Core ML's classifier head: the top class label, and {label: probability}, per the input vector."""
    probabilities = np.asarray(v["probabilities"], np.float32)
    classes = v["classes"]
    labels = list(classes.ls if hasattr(classes, "ls") else classes)
    rows = probabilities.reshape(-1, probabilities.shape[-1])
    if rows.shape[0] != 1:
        raise MILEvaluationError(f"classify: Core ML classifies one probability vector, got {probabilities.shape}")
    row = rows[0]
    label = labels[int(np.argmax(row))]
    return label, {name: float(p) for name, p in zip(labels, row)}


#: The ops evaluated here rather than through coremltools' value_inference.
NUMPY_OPS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "conv": _conv_op,
    "avg_pool": _pool_op("avg"),
    "max_pool": _pool_op("max"),
    "classify": _classify_op,
    "erf": _erf_op,
    "gelu": _gelu_op,
    "reduce_mean": _reduce_op(np.mean),
    "reduce_sum": _reduce_op(np.sum),
    "reduce_max": _reduce_op(np.max),
    "reduce_min": _reduce_op(np.min),
}
